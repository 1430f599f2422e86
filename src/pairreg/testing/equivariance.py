"""Numerical E(3) × permutation checks any molecule model in `pairreg` must pass.

After e3nn's ``equivariance_error`` (random rotations with and without parity, transform done
in float64) with nequip's permutation check: for a random orthogonal Q (det +1 or −1), a
random translation t and a random permutation P of the atoms inside each molecule,

    f(P(x Qᵀ + t)) = f(x)                 for the invariant prediction
    x_L(P(x Qᵀ + t)) = P(x_L(x) Qᵀ + t)   for every layer's coordinates
    v_L(P(x Qᵀ + t)) = P(Q v_L(x))        for every layer's vector features (PaiNN), polar vectors
    f_L(P(x Qᵀ + t)) = P(f_L(x) D(Q)ᵀ)    for every layer's steerable l>0 features (SEGNN), D(Q) e3nn's
                                          representation of their irreps, parity included

Shipped in the package so a new backbone or mitigation gets the battery for free.
"""

from __future__ import annotations

import numpy as np
import torch


def random_orthogonal(det: int, rng: np.random.Generator) -> torch.Tensor:
    """A Haar-random 3×3 orthogonal matrix with determinant ``det`` (±1), float64."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return torch.from_numpy(q)


def random_molecules(sizes, rng: np.random.Generator, elements=(1, 6, 7, 8, 9), spread: float = 1.5):
    """Lists of (z, pos Å) for molecules of the given sizes, atoms ~ N(0, spread²)."""
    zs = [rng.choice(elements, size=n) for n in sizes]
    ps = [rng.normal(scale=spread, size=(n, 3)) for n in sizes]
    return zs, ps


def transform(zs, ps, q: torch.Tensor, t: torch.Tensor, perms):
    """Apply x ↦ x Qᵀ + t and the per-molecule permutations, in float64."""
    qn, tn = q.numpy(), t.numpy()
    return [z[p] for z, p in zip(zs, perms)], [(x @ qn.T + tn)[p] for x, p in zip(ps, perms)]


def irreps_matrix(irreps, q: torch.Tensor) -> torch.Tensor:
    """e3nn's representation D(Q) (dim × dim, float64) of the orthogonal ``q`` on ``irreps``, parity included.

    Computed with float64 as the default dtype: e3nn builds its so(3) generators in the default dtype, and
    in float32 D(Q) is only good to ~1e-7, too coarse for the float64 checks."""
    from e3nn import o3

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return o3.Irreps(irreps).D_from_matrix(q.to(torch.float64))
    finally:
        torch.set_default_dtype(old)


def equivariance_errors(model, zs, ps, det: int, rng, dtype=torch.float64) -> dict[str, float]:
    """Worst absolute errors of the invariant output and of every layer's coordinates and equivariant features."""
    from ..data.molecules import make_batch

    q = random_orthogonal(det, rng)
    t = torch.from_numpy(rng.normal(scale=3.0, size=3))
    perms = [rng.permutation(len(z)) for z in zs]
    zs2, ps2 = transform(zs, ps, q, t, perms)
    b1 = make_batch(zs, ps, dtype=dtype, centre=False)  # as given: the check is on the model's own equivariance
    b2 = make_batch(zs2, ps2, dtype=dtype, centre=False)
    model = model.to(dtype).eval()
    with torch.no_grad():
        y1, r1 = model(b1.z, b1.pos, b1.batch, b1.edge_index, b1.num_molecules)
        y2, r2 = model(b2.z, b2.pos, b2.batch, b2.edge_index, b2.num_molecules)
    # the atom permutation as one index over the batch
    offsets = np.concatenate([[0], np.cumsum([len(z) for z in zs])[:-1]])
    flat = torch.from_numpy(np.concatenate([p + o for p, o in zip(perms, offsets)]))
    coord_err = 0.0
    for x1, x2 in zip(r1.x, r2.x):
        expected = (x1.double() @ q.T + t)[flat]
        coord_err = max(coord_err, float((x2.double() - expected).abs().max()))
    feat_err = max(float((h2.double() - h1.double()[flat]).abs().max()) for h1, h2 in zip(r1.h, r2.h))
    vec_err = 0.0
    for v1, v2 in zip(r1.v, r2.v):  # (n_atoms, 3, H): rotate the middle axis
        expected = torch.einsum("ab,nbh->nah", q, v1.double())[flat]
        vec_err = max(vec_err, float((v2.double() - expected).abs().max()))
    irreps_err = 0.0
    if r1.f:  # (n_atoms, D) in e3nn's layout: f ↦ f D(Q)ᵀ
        d = irreps_matrix(r1.f_irreps, q)
        for f1, f2 in zip(r1.f, r2.f):
            irreps_err = max(irreps_err, float((f2.double() - (f1.double() @ d.T)[flat]).abs().max()))
    return {
        "output": float((y1.double() - y2.double()).abs().max()),
        "coords": coord_err,
        "features": feat_err,
        "vectors": vec_err,
        "irreps": irreps_err,
        "output_scale": float(y1.double().abs().max()),
    }


def assert_equivariant(model, sizes=(5, 9), trials: int = 2, dtype=torch.float64, atol: float | None = None, seed: int = 0,
                       dets=(1, -1)):
    """Raise AssertionError if any check exceeds ``atol`` (default 1e-9 in float64, 2e-4 in float32).

    ``dets``: determinants of the orthogonal maps tried, (1, −1) by default (E(3)); ``(1,)`` restricts the
    battery to proper rotations, for SE(3)-equivariant models such as ClofNet, which reflections change.
    """
    if not dets or any(d not in (1, -1) for d in dets):
        raise ValueError(f"dets={dets!r}: give determinants +1 and/or -1")
    atol = atol if atol is not None else (1e-9 if dtype == torch.float64 else 2e-4)
    rng = np.random.default_rng(seed)
    worst = {}
    for trial in range(trials):
        zs, ps = random_molecules(sizes, rng)
        for det in dets:
            errs = equivariance_errors(model, zs, ps, det, rng, dtype)
            for key in ("output", "coords", "features", "vectors", "irreps"):
                worst[key] = max(worst.get(key, 0.0), errs[key])
                if errs[key] > atol:
                    kind = "equivariant" if key in ("coords", "vectors", "irreps") else "invariant"
                    raise AssertionError(f"{key} not {kind} "
                                         f"(det {det:+d}, trial {trial}): error {errs[key]:.3g} > {atol:.1g}")
    return worst


def assert_batch_independent(model, sizes=(4, 7, 11), dtype=torch.float64, atol: float | None = None, seed: int = 1):
    """Molecules batched together must give what each gives alone (no leakage across molecules)."""
    from ..data.molecules import make_batch

    atol = atol if atol is not None else (1e-10 if dtype == torch.float64 else 1e-4)
    rng = np.random.default_rng(seed)
    zs, ps = random_molecules(sizes, rng)
    model = model.to(dtype).eval()
    with torch.no_grad():
        b = make_batch(zs, ps, dtype=dtype)
        together, rec = model(b.z, b.pos, b.batch, b.edge_index, b.num_molecules)
        for k, (z, p) in enumerate(zip(zs, ps)):
            one = make_batch([z], [p], dtype=dtype)
            alone, rec1 = model(one.z, one.pos, one.batch, one.edge_index, 1)
            err = float((alone[0] - together[k]).abs().max())
            if err > atol:
                raise AssertionError(f"molecule {k} ({len(z)} atoms): batched vs alone differ by {err:.3g} > {atol:.1g}")
            mol = b.batch == k
            xerr = max(float((x1 - xb[mol]).abs().max()) for x1, xb in zip(rec1.x, rec.x))
            if xerr > atol:
                raise AssertionError(f"molecule {k}: coordinates batched vs alone differ by {xerr:.3g}")
            verr = max((float((v1 - vb[mol]).abs().max()) for v1, vb in zip(rec1.v, rec.v)), default=0.0)
            if verr > atol:
                raise AssertionError(f"molecule {k}: vector features batched vs alone differ by {verr:.3g}")
            ferr = max((float((f1 - fb[mol]).abs().max()) for f1, fb in zip(rec1.f, rec.f)), default=0.0)
            if ferr > atol:
                raise AssertionError(f"molecule {k}: steerable features batched vs alone differ by {ferr:.3g}")
