# fcc Cu with pair_style equimd: NVT at 300 K, then NVE (docs/lammps.md).
#
#   equimd lammps build -o plugin                       # once: plugin/equimdplugin.so
#   mpirun -np 2 lmp -in in.cu -var model ../../demo_out/model_float32.pt
#
# Variables (-var NAME VALUE): model (file from `equimd deploy`), plugin, cells (fcc cells per
# side, 4 atoms each), steps.

variable        model  index model.pt
variable        plugin index plugin/equimdplugin.so
variable        cells  index 5
variable        steps  index 200

units           metal                    # the model's units: Å, eV, ps
atom_style      atomic
boundary        p p p
newton          on                       # required: ghost-atom forces go back to their owners

lattice         fcc 3.61
region          box block 0 ${cells} 0 ${cells} 0 ${cells}
create_box      1 box
create_atoms    1 box
mass            1 63.546

plugin          load ${plugin}
pair_style      equimd ${model}
pair_coeff      * * Cu                   # one element symbol per atom type

neighbor        1.0 bin                  # ghost cutoff = receptive field + this skin
velocity        all create 300.0 4928459 loop geom
timestep        0.002                    # ps

thermo_style    custom step temp pe ke etotal press vol
thermo          20

fix             nvt all nvt temp 300.0 300.0 0.1
run             ${steps}
unfix           nvt

fix             nve all nve
run             ${steps}
