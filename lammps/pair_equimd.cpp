/* pair_style equimd (see pair_equimd.h and docs/lammps.md).

   Input script:
     units metal
     newton on                            (the default)
     plugin load /path/to/equimdplugin.so
     pair_style equimd model.pt           (a TorchScript file from `equimd deploy`)
     pair_coeff * * Cu O                  (one element symbol per atom type)
*/

#include "pair_equimd.h"
#include <torch/csrc/jit/runtime/graph_executor.h>

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>

using namespace LAMMPS_NS;

namespace {

const char *const ELEMENTS[] = {
    "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si", "P",
    "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru", "Rh",
    "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd",
    "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",  "Re",
    "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th",
    "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db",
    "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
const int NUM_ELEMENTS = sizeof(ELEMENTS) / sizeof(ELEMENTS[0]);

long atomic_number(const std::string &symbol)
{
  for (int z = 0; z < NUM_ELEMENTS; z++)
    if (symbol == ELEMENTS[z]) return z + 1;
  return 0;
}

std::string element_list(const std::vector<long> &numbers)
{
  std::string text;
  for (long z : numbers) {
    if (!text.empty()) text += " ";
    text += (z >= 1 && z <= NUM_ELEMENTS) ? ELEMENTS[z - 1] : std::to_string(z);
  }
  return text;
}

}    // namespace

PairEquimd::PairEquimd(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // the virial comes from the model's strain derivative, not from sum_i x_i . f_i
  no_virial_fdotr_compute = 1;
}

PairEquimd::~PairEquimd()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairEquimd::allocate()
{
  allocated = 1;
  int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  for (int i = 1; i <= n; i++)
    for (int j = i; j <= n; j++) setflag[i][j] = 0;
  type_to_z.assign(n + 1, 0);
}

void PairEquimd::settings(int narg, char **arg)
{
  if (narg != 1)
    error->all(FLERR, "Illegal pair_style equimd command: expected `pair_style equimd MODEL.pt`");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR,
               std::string("pair_style equimd requires `units metal` (Å, eV, ps; the model's "
                           "units), not units ") + update->unit_style);
  model_path = arg[0];
  // equimd's compiled tensor-product kernel (files exported with --tp-backend compiled call
  // its operators): the library `equimd kernels status` names, set by
  // equimd.md_drivers.lammps.run_environment; loaded before the model.
  const char *kernel_library = std::getenv("EQUIMD_KERNEL_LIBRARY");
  if (kernel_library && *kernel_library && !dlopen(kernel_library, RTLD_NOW | RTLD_GLOBAL))
    error->all(FLERR, std::string("pair_style equimd: cannot load EQUIMD_KERNEL_LIBRARY=") +
                          kernel_library + ": " + dlerror() + " (run `equimd kernels build`)");
  try {
    model = torch::jit::load(model_path, torch::kCPU);
    model.eval();
  } catch (const std::exception &e) {
    std::string hint = " (expected a TorchScript file from `equimd deploy`)";
    if (std::strstr(e.what(), "equimd::receiver_sums") || std::strstr(e.what(), "equimd.receiver_sums"))
      hint = " (the file was exported with --tp-backend compiled: set EQUIMD_KERNEL_LIBRARY to "
             "the library `equimd kernels status` names, or export with --tp-backend fused)";
    error->all(FLERR, "pair_style equimd: cannot load model file " + model_path + ": " +
                          e.what() + hint);
  }
  if (!model.find_method("compute_local") || !model.hasattr("receptive_field"))
    error->all(FLERR,
               "pair_style equimd: " + model_path + " has no compute_local method (an "
               "AOTInductor package, or a file exported before LAMMPS support): export the "
               "checkpoint again with `equimd deploy --format torchscript`");
  r_max = model.attr("r_max").toDouble();
  receptive_field = model.attr("receptive_field").toDouble();
  if (receptive_field <= 0.0)
    error->all(FLERR,
               "pair_style equimd: the receptive field of " + model_path + " is unknown (its "
               "model type is not in equimd.deploy.metadata.RECEPTIVE_FIELD_LAYERS), so the "
               "ghost-atom cutoff cannot be chosen");
  at::Tensor numbers = model.attr("species").toTensor().to(torch::kLong).contiguous();
  species.assign(numbers.data_ptr<int64_t>(), numbers.data_ptr<int64_t>() + numbers.numel());
  loaded = true;
  if (comm->me == 0) {
    std::ostringstream text;
    text << "pair_style equimd: " << model_path << ", elements " << element_list(species)
         << ", r_max " << r_max << " A, receptive field " << receptive_field << " A\n";
    utils::logmesg(lmp, "{}", text.str());
  }
}

void PairEquimd::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR,
               "Incorrect args for pair_coeff equimd: expected `pair_coeff * * ELEMENT...` with "
               "one element symbol per atom type (" + std::to_string(ntypes) + " types)");
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "Incorrect args for pair_coeff equimd: the first two must be `* *`");
  for (int type = 1; type <= ntypes; type++) {
    std::string symbol = arg[1 + type];
    long z = atomic_number(symbol);
    if (z == 0)
      error->all(FLERR, "pair_coeff equimd: `" + symbol + "` (atom type " +
                            std::to_string(type) + ") is not an element symbol");
    if (std::find(species.begin(), species.end(), z) == species.end())
      error->all(FLERR, "pair_coeff equimd: element " + symbol + " (atom type " +
                            std::to_string(type) + ") is not one of the model's elements (" +
                            element_list(species) + ")");
    type_to_z[type] = z;
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
}

void PairEquimd::init_style()
{
  if (!loaded) error->all(FLERR, "pair_style equimd: no model loaded");
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style equimd requires newton pair on (forces on ghost atoms are "
                      "sent back to their owners)");
  // no LAMMPS neighbor list: the model builds its own from the positions. What it needs are
  // all atoms within the receptive field of a local atom, with atoms moving up to skin/2
  // each between re-neighborings: ghost cutoff = receptive field + skin
  double needed = receptive_field + neighbor->skin;
  if (comm->cutghostuser < needed) comm->cutghostuser = needed;
}

double PairEquimd::init_one(int, int) { return r_max; }

void PairEquimd::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (vflag_atom)
    error->all(FLERR, "pair_style equimd does not compute per-atom virials (compute "
                      "stress/atom); the global virial and pressure are available");
  int nlocal = atom->nlocal;
  int nall = nlocal + atom->nghost;
  if (nall == 0) return;
  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;

  at::Tensor positions = torch::from_blob(x[0], {nall, 3}, torch::kFloat64).clone();
  at::Tensor numbers = torch::empty({nall}, torch::kLong);
  int64_t *z = numbers.data_ptr<int64_t>();
  for (int i = 0; i < nall; i++) z[i] = type_to_z[type[i]];

  at::Tensor forces, energy, atomic, w;
  // every call on the same, unoptimised plan: TorchScript's profiling executor runs the first
  // call(s) of a loaded module on another plan than later ones, and the two round differently,
  // so a run restarted from a restart file would part from the uninterrupted one in the last bit
  torch::jit::GraphOptimizerEnabledGuard same_plan_every_call(false);
  try {
    std::vector<c10::IValue> inputs{positions, numbers, static_cast<int64_t>(nlocal),
                                    static_cast<bool>(vflag_global)};
    auto out = model.get_method("compute_local")(inputs).toGenericDict();
    forces = out.at("forces").toTensor().to(torch::kFloat64).contiguous();
    energy = out.at("energy").toTensor().to(torch::kFloat64);
    atomic = out.at("atomic_energies").toTensor().to(torch::kFloat64).contiguous();
    w = out.at("virial").toTensor().to(torch::kFloat64).contiguous();
  } catch (const std::exception &e) {
    error->one(FLERR, std::string("pair_style equimd: model evaluation failed: ") + e.what());
  }
  const double *fm = forces.data_ptr<double>();
  for (int i = 0; i < nall; i++) {
    f[i][0] += fm[3 * i];
    f[i][1] += fm[3 * i + 1];
    f[i][2] += fm[3 * i + 2];
  }
  if (eflag_global) eng_vdwl += energy.item<double>();
  if (eflag_atom) {
    const double *ea = atomic.data_ptr<double>();
    for (int i = 0; i < nlocal; i++) eatom[i] += ea[i];
  }
  if (vflag_global) {
    const double *v = w.data_ptr<double>();
    virial[0] += v[0];    // xx
    virial[1] += v[4];    // yy
    virial[2] += v[8];    // zz
    virial[3] += v[1];    // xy
    virial[4] += v[2];    // xz
    virial[5] += v[5];    // yz
  }
}
