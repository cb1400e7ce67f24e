/* pair_style equimd: an `equimd deploy` TorchScript model as a LAMMPS pair style.

   Each rank evaluates the model on its local + ghost atoms as one non-periodic cluster
   (`DeployedPotential.compute_local`): the energy is that of the local atoms, forces are
   written for local and ghost atoms (newton_pair on: LAMMPS sends ghost forces back to their
   owners), the virial comes from the same autograd pass. The ghost cutoff is the model's
   receptive field (layers × r_max) plus the neighbor skin. See docs/lammps.md. */

#ifndef EQUIMD_PAIR_EQUIMD_H
#define EQUIMD_PAIR_EQUIMD_H

#include "pair.h"

#include <torch/script.h>

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairEquimd : public Pair {
 public:
  PairEquimd(class LAMMPS *);
  ~PairEquimd() override;
  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 protected:
  void allocate();

  torch::jit::Module model;
  std::string model_path;
  bool loaded = false;
  double r_max = 0.0;              // model cutoff, Å
  double receptive_field = -1.0;   // ghost cutoff the model needs, Å (-1: unknown)
  std::vector<long> species;       // atomic numbers the model knows
  std::vector<long> type_to_z;     // LAMMPS type (1-based) -> atomic number
};

}    // namespace LAMMPS_NS

#endif
