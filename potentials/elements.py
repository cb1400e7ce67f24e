"""Element symbols ↔ atomic numbers (no ASE import needed in deployed code)."""

from __future__ import annotations

SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge "
    "As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm "
    "Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U "
    "Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
NUMBERS = {s: z for z, s in enumerate(SYMBOLS)}


def symbol(z: int) -> str:
    return SYMBOLS[z] if 0 <= z < len(SYMBOLS) else f"Z{z}"


def atomic_number(name: str | int) -> int:
    """'Cu' or 29 → 29."""
    if isinstance(name, int):
        return name
    if name.isdigit():
        return int(name)
    if name not in NUMBERS:
        raise ValueError(f"unknown element symbol {name!r}")
    return NUMBERS[name]
