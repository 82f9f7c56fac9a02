"""Train and evaluate mace-torch as a baseline for scripts/bench_models.py.

Runs inside a separate virtual environment with mace-torch installed (it pins e3nn 0.4.4,
which conflicts with mlip's e3nn), e.g.::

    python -m venv ../mace-venv
    ../mace-venv/bin/pip install torch==2.13.0 mace-torch
    ../mace-venv/bin/python scripts/mace_torch_baseline.py --train train.xyz --test test.xyz \
        --seconds 300 --out mace.json

Inputs are extxyz files with labels in `REF_energy` / `REF_forces` / `REF_stress` (stress as
a full 3x3 in eV/Å³, ASE sign) and `subset` in atoms.info. The training recipe mirrors
mlip's defaults so the comparison is about the models: the same loss (MSE of energy per atom,
forces and stress with the same weights), AdamW, the same learning rate, batch size and
wall-time budget, per-element reference energies by least squares, scale = force RMS
(defaults: loss weights 20 / 10 / 100, AMSGrad, 100 warm-up steps and an EMA of the weights
with decay 0.99 used for evaluation, as in mlip's `experiment=sample`).
Prints and writes a JSON dict of metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import defaultdict

# e3nn 0.4.4 (pinned by mace-torch) loads its constants with torch.load's old default.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import ase.io  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from e3nn import o3  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--seconds", type=float, default=300.0, help="wall-time training budget")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--lmax", type=int, default=1)
    parser.add_argument("--correlation", type=int, default=3)
    parser.add_argument("--max-ell", type=int, default=None, help="l of edge spherical harmonics (default: --lmax, as mlip's)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--energy-weight", type=float, default=20.0)
    parser.add_argument("--forces-weight", type=float, default=10.0)
    parser.add_argument("--stress-weight", type=float, default=100.0)
    parser.add_argument("--ema-decay", type=float, default=0.99, help="EMA of the weights, used for evaluation (0: off)")
    parser.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up")
    parser.add_argument("--stage-two-start", type=float, default=0.0,
                        help="MACE's stage two (swa) from this fraction of the time budget (0: off)")
    parser.add_argument("--stage-two-energy-weight", type=float, default=1000.0, help="MACE's swa_energy_weight")
    parser.add_argument("--stage-two-forces-weight", type=float, default=100.0, help="MACE's swa_forces_weight")
    parser.add_argument("--stage-two-lr", type=float, default=1e-3, help="MACE's swa_lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--md-steps", type=int, default=200)
    parser.add_argument("--out", default=None)
    parser.add_argument("--checkpoint", default=None,
                        help="resumable state (weights, optimiser, EMA, clock, curve), written every --checkpoint-every "
                             "training seconds; an existing one is resumed, so a budget can span several sessions")
    parser.add_argument("--checkpoint-every", type=float, default=300.0)
    parser.add_argument("--curve-every", type=float, default=0.0,
                        help="evaluate on --test every this many training seconds (clock paused): a learning curve")
    parser.add_argument("--predict", action="append", default=[], metavar="NAME=FILE",
                        help="also write the model's energies (eV) for every structure of FILE (labels ignored)")
    return parser.parse_args(argv)


def least_squares_reference_energies(atoms_list, elements):
    counts = np.array([[np.sum(a.numbers == z) for z in elements] for a in atoms_list], dtype=float)
    energies = np.array([a.info["REF_energy"] for a in atoms_list])
    ridge = 1e-8 * np.eye(len(elements))
    return np.linalg.solve(counts.T @ counts + ridge, counts.T @ energies)


def to_atomic_data(atoms_list, z_table, cutoff):
    from mace import data as mace_data

    keyspec = mace_data.KeySpecification(
        info_keys={"energy": "REF_energy", "stress": "REF_stress"},
        arrays_keys={"forces": "REF_forces"},
    )
    graphs = []
    for atoms in atoms_list:
        config = mace_data.config_from_atoms(atoms, key_specification=keyspec)
        graphs.append(mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=cutoff))
    return graphs


def build_model(args, elements, reference_energies, avg_num_neighbors, scale, shift):
    from mace import modules

    hidden = o3.Irreps(" + ".join(f"{args.channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(args.lmax + 1)))
    return modules.ScaleShiftMACE(
        r_max=args.cutoff,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=args.max_ell if args.max_ell is not None else args.lmax,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=args.layers,
        num_elements=len(elements),
        hidden_irreps=hidden,
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.asarray(reference_energies),
        avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=list(elements),
        correlation=args.correlation,
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        atomic_inter_scale=scale,
        atomic_inter_shift=shift,
    )


def loss_fn(batch, output, args):
    n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(output["energy"].dtype)
    energy_loss = torch.mean(((output["energy"] - batch.energy) / n_atoms) ** 2)
    force_loss = torch.mean((output["forces"] - batch.forces) ** 2)
    loss = args.energy_weight * energy_loss + args.forces_weight * force_loss
    stress_mask = batch.stress_weight > 0
    if stress_mask.any() and output.get("stress") is not None:
        stress_error = (output["stress"] - batch.stress)[stress_mask]
        loss = loss + args.stress_weight * torch.mean(stress_error**2)
    return loss


def evaluate(model, loader, test_atoms):
    energy_errors, force_errors, subsets = [], [], []
    for batch in loader:
        output = model(batch.to_dict(), training=False, compute_force=True, compute_stress=False)
        n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).double()
        energy_errors.append(((output["energy"] - batch.energy).detach().double() / n_atoms).abs())
        force_errors.append((output["forces"] - batch.forces).detach().abs().reshape(-1))
    energy_errors = torch.cat(energy_errors).numpy()
    force_errors = torch.cat(force_errors).numpy()
    subsets = [a.info.get("subset", "") for a in test_atoms]
    per_subset = defaultdict(list)
    for subset, error in zip(subsets, energy_errors):
        per_subset[subset].append(error)
    return {
        "energy_mae_mev_per_atom": 1000 * float(energy_errors.mean()),
        "force_mae_mev_per_A": 1000 * float(force_errors.mean()),
        "energy_mae_mev_per_atom_by_subset": {k: 1000 * float(np.mean(v)) for k, v in sorted(per_subset.items())},
    }


def predict_energies(model, path, z_table, cutoff):
    """The model's energy (eV) for every structure of an ASE-readable file, in file order."""
    from mace import data as mace_data
    from mace.tools import torch_geometric

    keyspec = mace_data.KeySpecification(info_keys={}, arrays_keys={})
    atoms_list = ase.io.read(path, ":")
    graphs = [
        mace_data.AtomicData.from_config(mace_data.config_from_atoms(a, key_specification=keyspec), z_table=z_table, cutoff=cutoff)
        for a in atoms_list
    ]
    energies = []
    for batch in torch_geometric.dataloader.DataLoader(graphs, batch_size=32, shuffle=False):
        output = model(batch.to_dict(), training=False, compute_force=False)
        energies.extend(float(e) for e in output["energy"].detach())
    return energies


def md_atom_steps_per_second(model, z_table, cutoff, n_steps):
    """Velocity-Verlet MD on a 9-atom molecule with mace-torch's model behind an ASE calculator."""
    from ase import units
    from ase.build import molecule
    from ase.calculators.calculator import Calculator, all_changes
    from ase.md.verlet import VelocityVerlet
    from mace import data as mace_data
    from mace.tools import torch_geometric

    class _Calc(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            config = mace_data.config_from_atoms(atoms)
            graph = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=cutoff)
            batch = next(iter(torch_geometric.dataloader.DataLoader([graph], batch_size=1)))
            output = model(batch.to_dict(), compute_force=True)
            self.results = {
                "energy": float(output["energy"].detach()[0]),
                "forces": output["forces"].detach().numpy(),
            }

    atoms = molecule("CH3CH2OH")
    atoms = atoms[[i for i, z in enumerate(atoms.numbers) if z in z_table.zs]]
    atoms.calc = _Calc()
    dynamics = VelocityVerlet(atoms, 0.5 * units.fs)
    dynamics.run(5)
    start = time.perf_counter()
    dynamics.run(n_steps)
    elapsed = time.perf_counter() - start
    return len(atoms) * n_steps / elapsed


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    from mace.modules.utils import compute_avg_num_neighbors
    from mace.tools import AtomicNumberTable, torch_geometric
    from torch_ema import ExponentialMovingAverage

    train_atoms = ase.io.read(args.train, ":")
    test_atoms = ase.io.read(args.test, ":")
    elements = sorted({int(z) for a in train_atoms for z in a.numbers})
    z_table = AtomicNumberTable(elements)
    references = least_squares_reference_energies(train_atoms, elements)
    train_graphs = to_atomic_data(train_atoms, z_table, args.cutoff)
    test_graphs = to_atomic_data(test_atoms, z_table, args.cutoff)
    train_loader = torch_geometric.dataloader.DataLoader(train_graphs, batch_size=args.batch_size, shuffle=True, drop_last=False)
    test_loader = torch_geometric.dataloader.DataLoader(test_graphs, batch_size=32, shuffle=False)

    avg_num_neighbors = compute_avg_num_neighbors(train_loader)
    force_rms = float(np.sqrt(np.mean(np.concatenate([a.arrays["REF_forces"].reshape(-1) ** 2 for a in train_atoms]))))
    residual_per_atom = [
        (a.info["REF_energy"] - sum(references[elements.index(z)] for z in a.numbers)) / len(a) for a in train_atoms
    ]
    model = build_model(args, elements, references, avg_num_neighbors, force_rms, float(np.mean(residual_per_atom)))
    n_parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, amsgrad=True)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(args.warmup_steps, 1)))
    ema = ExponentialMovingAverage(model.parameters(), decay=args.ema_decay) if args.ema_decay > 0 else None

    curve = []

    def elapsed() -> float:
        """Seconds of the training budget used so far: wall time without the paused evaluations and
        checkpoints, over resumes."""
        return time.perf_counter() - start - paused_seconds

    def record_curve_point():
        if ema is not None:
            with ema.average_parameters():
                metrics = evaluate(model, test_loader, test_atoms)
        else:
            metrics = evaluate(model, test_loader, test_atoms)
        curve.append({"wall_seconds": elapsed(), "train_seconds": training_seconds,
                      "steps": steps, **metrics})
        print(json.dumps({"curve": curve[-1]}), flush=True)

    start = time.perf_counter()
    structures_seen, steps = 0, 0
    training_seconds = 0.0
    paused_seconds = 0.0
    next_curve_point = args.curve_every
    stage_two_step = None
    if args.checkpoint and os.path.exists(args.checkpoint):  # resume: the clock continues from the saved time
        state = torch.load(args.checkpoint, weights_only=True)  # tensors and plain containers only
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        warmup.load_state_dict(state["warmup"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        structures_seen, steps, training_seconds = state["structures_seen"], state["steps"], state["training_seconds"]
        next_curve_point, stage_two_step, curve[:] = state["next_curve_point"], state["stage_two_step"], state["curve"]
        args.energy_weight, args.forces_weight = state["energy_weight"], state["forces_weight"]
        paused_seconds = -state["elapsed"]  # elapsed = now - start - paused starts at the saved value
        print(json.dumps({"resumed_from_step": steps, "elapsed": state["elapsed"]}), flush=True)
    next_checkpoint = elapsed() + args.checkpoint_every

    def save_checkpoint():
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "warmup": warmup.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None, "rng": torch.get_rng_state(),
                 "structures_seen": structures_seen, "steps": steps, "training_seconds": training_seconds,
                 "next_curve_point": next_curve_point, "stage_two_step": stage_two_step, "curve": curve,
                 "energy_weight": args.energy_weight, "forces_weight": args.forces_weight,
                 "elapsed": elapsed()}
        temporary = f"{args.checkpoint}.tmp"
        torch.save(state, temporary)
        os.replace(temporary, args.checkpoint)  # never half a checkpoint

    while elapsed() < args.seconds:
        for batch in train_loader:
            step_start = time.perf_counter()
            if stage_two_step is None and 0 < args.stage_two_start <= elapsed() / args.seconds:
                # MACE's stage two: other loss weights and a fixed learning rate from here on
                stage_two_step = steps
                args.energy_weight, args.forces_weight = args.stage_two_energy_weight, args.stage_two_forces_weight
                warmup.base_lrs = [args.stage_two_lr for _ in warmup.base_lrs]
                for group in optimizer.param_groups:
                    group["lr"] = args.stage_two_lr
                print(json.dumps({"stage_two_from_step": steps}), flush=True)
            optimizer.zero_grad()
            output = model(batch.to_dict(), training=True, compute_force=True, compute_stress=args.stress_weight > 0)
            loss = loss_fn(batch, output, args)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            warmup.step()
            if ema is not None:
                ema.update()
            training_seconds += time.perf_counter() - step_start
            structures_seen += batch.num_graphs
            steps += 1
            if args.curve_every > 0 and elapsed() >= next_curve_point:
                pause_start = time.perf_counter()
                record_curve_point()
                paused_seconds += time.perf_counter() - pause_start
                next_curve_point += args.curve_every
            if args.checkpoint and elapsed() >= next_checkpoint:
                pause_start = time.perf_counter()
                save_checkpoint()
                paused_seconds += time.perf_counter() - pause_start
                next_checkpoint += args.checkpoint_every
            if elapsed() >= args.seconds:
                break

    if ema is not None:
        ema.copy_to(model.parameters())  # evaluate with the EMA weights, as mace-torch's trainer does
    result = {
        "model": "mace-torch",
        "parameters": n_parameters,
        "train_seconds": elapsed(),
        "steps": steps,
        "stage_two_from_step": stage_two_step,
        "train_structures_per_s": structures_seen / training_seconds,
        **evaluate(model, test_loader, test_atoms),
        "md_atom_steps_per_s": md_atom_steps_per_second(model, z_table, args.cutoff, args.md_steps),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "curve": curve,
        "predictions": {name: predict_energies(model, path, z_table, args.cutoff) for name, path in
                        (item.split("=", 1) for item in args.predict)},
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
