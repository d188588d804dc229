"""Channel atoms: the bookkeeping under the dependency graph.

Every channel that a layer creates (a filter of a convolution, a unit of a Dense, one channel
of a model input) is an *atom*, an integer. A tensor's channel axis is described by a
``ChannelMap``: which atom sits at each position, and whether a pruned channel would be exactly
zero there. Layers that tie channels together (residual adds, shared layers) union atoms;
concatenations concatenate maps; Flatten tiles them. The classes of united atoms are the units
that must be pruned together.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class ChannelMap:
    """Which atom sits at each position of a tensor's channel (last) axis.

    Attributes:
      atoms: int array, one atom per channel position.
      zero_ok: bool array; False where a pruned channel would carry a non-zero constant
        (after an activation with f(0) != 0, or an added offset).
    """

    atoms: np.ndarray
    zero_ok: np.ndarray

    def __len__(self):
        return len(self.atoms)

    @classmethod
    def of(cls, atoms, zero_ok=True):
        atoms = np.asarray(atoms, dtype=np.int64)
        return cls(atoms, np.broadcast_to(np.asarray(zero_ok, bool), atoms.shape).copy())

    def with_zero_ok(self, zero_ok):
        return ChannelMap(self.atoms, np.broadcast_to(np.asarray(zero_ok, bool), self.atoms.shape).copy())

    def repeat(self, times):
        return ChannelMap(np.repeat(self.atoms, times), np.repeat(self.zero_ok, times))

    def tile(self, times):
        return ChannelMap(np.tile(self.atoms, times), np.tile(self.zero_ok, times))

    @staticmethod
    def concat(maps):
        return ChannelMap(
            np.concatenate([m.atoms for m in maps]), np.concatenate([m.zero_ok for m in maps])
        )


class Atoms:
    """A union-find over channel atoms, with per-atom freeze reasons and a space per atom.

    A *space* is the block of atoms created together (one layer's output channels); spaces
    linked by any union form one dependency group.
    """

    def __init__(self):
        self._parent = []
        self._space_of = []
        self.spaces = []  # (owner description, first atom, size)
        self.frozen = {}  # atom -> list of reasons

    def new_space(self, size, owner):
        start = len(self._parent)
        space = len(self.spaces)
        self.spaces.append((owner, start, size))
        self._parent.extend(range(start, start + size))
        self._space_of.extend([space] * size)
        return np.arange(start, start + size, dtype=np.int64)

    def find(self, atom):
        parent = self._parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:
            parent[atom], atom = root, parent[atom]
        return root

    def union(self, a, b):
        """Unites two atom arrays position by position."""
        for x, y in zip(np.asarray(a).tolist(), np.asarray(b).tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                if rx < ry:
                    self._parent[ry] = rx
                else:
                    self._parent[rx] = ry

    def freeze(self, atoms, reason):
        for atom in np.asarray(atoms).tolist():
            self.frozen.setdefault(atom, [])
            if reason not in self.frozen[atom]:
                self.frozen[atom].append(reason)

    def roots(self):
        return np.array([self.find(a) for a in range(len(self._parent))], dtype=np.int64)

    def space_of(self, atom):
        return self._space_of[atom]

    def __len__(self):
        return len(self._parent)
