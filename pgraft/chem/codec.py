"""A molecule as a fixed-size tensor, and back (the molecules task's data shape).

A molecule of at most ``MAX_ATOMS`` heavy atoms is a graph: an atom type per slot (one of
``ATOM_SYMBOLS`` or "no atom") and a bond type per unordered pair of slots (single, double,
triple or "no bond"; aromatic rings are kekulised). Hydrogens are implicit and formal charges
and stereochemistry are not represented (docs/molecules.md lists what this loses on QM9).

Model space is one flat vector per molecule, the one-hots scaled to {-1, +1}:
``[atoms: MAX_ATOMS × ATOM_CLASSES | bonds: PAIRS × BOND_CLASSES]`` (189 numbers for QM9). The
pairs are the upper triangle i < j, so a bond is one set of numbers and the graph is symmetric by
construction. :func:`decode` takes the arg-max of every slot: the *codes* [B, MAX_ATOMS + PAIRS]
(int64), which is what rewards receive. :func:`to_molecule` builds the RDKit molecule; one that
fails sanitisation, is empty or falls into several fragments is invalid (``None``): a real
outcome of sampling, never an error.
"""

from __future__ import annotations

import hashlib

import torch

from ..errors import ShapeError
from . import require_rdkit

MAX_ATOMS = 9
ATOM_SYMBOLS = ("C", "N", "O", "F")  # class 0 is "no atom"
ATOM_CLASSES = len(ATOM_SYMBOLS) + 1
BOND_CLASSES = 4  # none, single, double, triple
PAIRS_I, PAIRS_J = torch.triu_indices(MAX_ATOMS, MAX_ATOMS, offset=1)
PAIRS = PAIRS_I.numel()
_PAIR_LIST = list(zip(PAIRS_I.tolist(), PAIRS_J.tolist()))  # (i, j) of pair p, for the per-molecule loops
_PAIR_INDEX = {pair: p for p, pair in enumerate(_PAIR_LIST)}
ATOM_DIM = MAX_ATOMS * ATOM_CLASSES
SAMPLE_DIM = ATOM_DIM + PAIRS * BOND_CLASSES  # the model-space vector
CODE_DIM = MAX_ATOMS + PAIRS  # the decoded codes


class EncodeError(ValueError):
    """A molecule the codec cannot represent (its kind names why: the round-trip report)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def _bond_types():
    from rdkit import Chem

    return (None, Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE)


def encode_codes(mol) -> torch.Tensor:
    """An RDKit molecule → its codes [CODE_DIM]; raises EncodeError for what the codec lacks."""
    from rdkit import Chem

    if mol is None:
        raise EncodeError("unparsable", "RDKit could not parse it")
    mol = Chem.Mol(mol)
    if mol.GetNumAtoms() > MAX_ATOMS:
        raise EncodeError("too_many_atoms", f"{mol.GetNumAtoms()} heavy atoms > {MAX_ATOMS}")
    codes = torch.zeros(CODE_DIM, dtype=torch.int64)
    for atom in mol.GetAtoms():
        if atom.GetSymbol() not in ATOM_SYMBOLS:
            raise EncodeError("element", f"element {atom.GetSymbol()} is not one of {ATOM_SYMBOLS}")
        if atom.GetFormalCharge() != 0:
            raise EncodeError("charged", f"atom {atom.GetIdx()} has formal charge {atom.GetFormalCharge()}")
        if atom.GetNumRadicalElectrons():
            raise EncodeError("radical", f"atom {atom.GetIdx()} is a radical")
        codes[atom.GetIdx()] = ATOM_SYMBOLS.index(atom.GetSymbol()) + 1
    Chem.Kekulize(mol, clearAromaticFlags=True)
    bond_types = _bond_types()
    for bond in mol.GetBonds():
        i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        if bond.GetBondType() not in bond_types:
            raise EncodeError("bond", f"bond type {bond.GetBondType()} after kekulisation")
        codes[MAX_ATOMS + _PAIR_INDEX[(i, j)]] = bond_types.index(bond.GetBondType())
    return codes


def codes_to_model(codes: torch.Tensor) -> torch.Tensor:
    """Codes [B, CODE_DIM] → model space [B, SAMPLE_DIM] (one-hots scaled to {-1, +1})."""
    atoms = torch.nn.functional.one_hot(codes[:, :MAX_ATOMS], ATOM_CLASSES)
    bonds = torch.nn.functional.one_hot(codes[:, MAX_ATOMS:], BOND_CLASSES)
    return torch.cat([atoms.flatten(1), bonds.flatten(1)], 1).float() * 2 - 1


def decode(x: torch.Tensor) -> torch.Tensor:
    """Model space [B, SAMPLE_DIM] → codes [B, CODE_DIM] (the arg-max of every slot)."""
    if x.ndim != 2 or x.shape[1] != SAMPLE_DIM:
        raise ShapeError(f"molecule samples must be [B, {SAMPLE_DIM}], got {tuple(x.shape)}")
    atoms = x[:, :ATOM_DIM].reshape(-1, MAX_ATOMS, ATOM_CLASSES).argmax(-1)
    bonds = x[:, ATOM_DIM:].reshape(-1, PAIRS, BOND_CLASSES).argmax(-1)
    return torch.cat([atoms, bonds], 1)


def check_codes(codes: torch.Tensor, what: str = "a molecule reward") -> None:
    """Refuse anything but decoded molecules: an int tensor [B, CODE_DIM] of valid classes."""
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or codes.shape[1] != CODE_DIM:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ShapeError(
            f"{what} takes decoded molecules, int64 codes [B, {CODE_DIM}] (pgraft.chem.codec.decode), got {shape}"
        )
    if codes.is_floating_point():
        raise ShapeError(f"{what} takes decoded molecule codes (int64), got {codes.dtype}: decode the samples first")
    if codes.numel() and (
        int(codes[:, :MAX_ATOMS].min()) < 0
        or int(codes[:, :MAX_ATOMS].max()) >= ATOM_CLASSES
        or int(codes[:, MAX_ATOMS:].min()) < 0
        or int(codes[:, MAX_ATOMS:].max()) >= BOND_CLASSES
    ):
        raise ShapeError(f"{what}: codes out of range (atoms 0..{ATOM_CLASSES - 1}, bonds 0..{BOND_CLASSES - 1})")


def to_molecule(row: torch.Tensor):
    """One row of codes → a sanitised RDKit molecule, or None when it is not a valid molecule
    (empty, a valence RDKit rejects, or several fragments). Bonds to empty slots are dropped."""
    from rdkit import Chem

    row = row.tolist()
    atoms = row[:MAX_ATOMS]
    mol = Chem.RWMol()
    index = {}
    for slot, cls in enumerate(atoms):
        if cls:
            index[slot] = mol.AddAtom(Chem.Atom(ATOM_SYMBOLS[cls - 1]))
    if not index:
        return None
    bond_types = _bond_types()
    for (i, j), cls in zip(_PAIR_LIST, row[MAX_ATOMS:]):
        if cls and i in index and j in index:
            mol.AddBond(index[i], index[j], bond_types[cls])
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several types (valence, kekulisation): all mean invalid
        return None
    if len(Chem.GetMolFrags(mol)) != 1:
        return None
    return mol.GetMol()


# GDSS's charge rule (Jo et al. 2022, utils/mol_utils.py construct_mol): N, O or S one bond over
# their valence become N+, O+ or S+ as each bond is added.
_CHARGEABLE = {"N": 3, "O": 2, "S": 2}


def valency_valid(row: torch.Tensor) -> bool:
    """The field's "validity without correction" of one row of codes, as GDSS's released code
    counts it (and the QM9 figures of GDSS and DiGress use): every atom passes RDKit's valence
    check after N/O/S⁺ charges are allowed, and a graph of several fragments still counts.
    :func:`to_molecule` (one fragment, full sanitisation, no charges) is stricter; both are
    reported (docs/molecules.md)."""
    from rdkit import Chem

    row = row.tolist()
    mol = Chem.RWMol()
    index = {slot: mol.AddAtom(Chem.Atom(ATOM_SYMBOLS[cls - 1])) for slot, cls in enumerate(row[:MAX_ATOMS]) if cls}
    if not index:
        return False
    bond_types = _bond_types()
    # GDSS adds bonds by the larger end atom, then the smaller (np.nonzero over start > end)
    bonds = sorted(
        ((j, i), cls) for (i, j), cls in zip(_PAIR_LIST, row[MAX_ATOMS:]) if cls and i in index and j in index
    )
    for (j, i), cls in bonds:
        mol.AddBond(index[i], index[j], bond_types[cls])
        problem = _valence_problem(mol)
        if problem is not None and problem[0] >= 0:  # an error that names no atom charges none
            atom = mol.GetAtomWithIdx(problem[0])
            if _CHARGEABLE.get(atom.GetSymbol()) == problem[1] - 1:
                atom.SetFormalCharge(1)
    return _valence_problem(mol) is None


def _valence_problem(mol) -> tuple[int, int] | None:
    """None when RDKit's property sanitisation passes, else (atom index, its valence) from the
    error (GDSS's check_valency); an error without both numbers reads as (−1, −1)."""
    import re

    from rdkit import Chem

    try:
        Chem.SanitizeMol(mol, sanitizeOps=Chem.SanitizeFlags.SANITIZE_PROPERTIES)
        return None
    except Exception as exc:  # RDKit's valence error names "# <atom>" and the valence it found
        numbers = [int(n) for n in re.findall(r"\d+", str(exc)[str(exc).find("#") :])]
        return (numbers[0], numbers[1]) if len(numbers) >= 2 else (-1, -1)


def molecules(codes: torch.Tensor) -> list:
    """Codes [B, CODE_DIM] → a list of RDKit molecules (None where invalid)."""
    require_rdkit()
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")  # invalid samples are expected: no per-molecule warnings
    check_codes(codes, "to_molecule")
    return [to_molecule(row) for row in codes.cpu()]


def valency_validity(codes: torch.Tensor) -> float:
    """The share of rows of ``codes`` that are valid without correction by GDSS's rule
    (:func:`valency_valid`)."""
    require_rdkit()
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    check_codes(codes, "valency_validity")
    return sum(valency_valid(row) for row in codes.cpu()) / codes.shape[0] if codes.shape[0] else float("nan")


def canonical_smiles(mol) -> str | None:
    """RDKit's canonical SMILES without stereochemistry (the codec does not keep it)."""
    from rdkit import Chem

    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


def stable_hash(text: str) -> int:
    """A 63-bit hash that is the same in every process (Python's hash() is salted per process,
    so ranks would disagree on duplicate keys)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def duplicate_keys(codes: torch.Tensor) -> torch.Tensor:
    """The dedup rule's key per sample [B] int64: the canonical SMILES of a valid molecule; an
    invalid graph's key is its codes (identical invalid graphs are duplicates too)."""
    keys = []
    for row, mol in zip(codes.cpu(), molecules(codes)):
        text = canonical_smiles(mol) if mol is not None else "invalid:" + ",".join(map(str, row.tolist()))
        keys.append(stable_hash(text))
    return torch.tensor(keys, dtype=torch.int64)
