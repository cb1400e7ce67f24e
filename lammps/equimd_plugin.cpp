// Registers `pair_style equimd` with LAMMPS (`plugin load equimdplugin.so`).

#include "lammpsplugin.h"
#include "pair_equimd.h"

#ifndef EQUIMD_LAMMPS_VERSION
#error "compile with -DEQUIMD_LAMMPS_VERSION='\"22 Jul 2025\"' (the target LAMMPS version)"
#endif

using namespace LAMMPS_NS;

static Pair *pair_equimd_creator(LAMMPS *lmp) { return new PairEquimd(lmp); }

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  lammpsplugin_t plugin;
  lammpsplugin_regfunc register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = EQUIMD_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "equimd";
  plugin.info = "equimd machine-learned potential (TorchScript model from `equimd deploy`)";
  plugin.author = "equimd";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &pair_equimd_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
