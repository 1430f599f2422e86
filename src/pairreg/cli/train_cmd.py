"""``pairreg train --preset NAME [--config FILE] [--set key=value ...] [--out DIR]``."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("train", help="train a model from a preset and overrides")
    from ..config import preset_names

    p.add_argument("--preset", help=f"shipped preset ({', '.join(preset_names())})")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from checkpoints/last.ckpt (its saved config; --set may change only "
                        "progress, threads, num_workers, accelerator, devices, strategy, num_nodes)")
    p.add_argument("--config", help="YAML file of config keys, applied after the preset")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--out", help="parent folder of the run directory (config key `out`)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args) -> int:
    from ..config import ConfigError, dump_yaml, load_config, parse_overrides

    if args.resume:
        if args.preset or args.config or args.out:
            raise ConfigError("--resume takes its config from RUN_DIR/config.yaml; drop --preset/--config/--out")
        from ..training.run import resume_config, train

        cfg = resume_config(args.resume, parse_overrides(args.set))
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        _report(train(cfg, resume=True))
        return 0
    overrides = list(args.set) + ([f"out={args.out}"] if args.out else [])
    cfg = load_config(args.preset, overrides, args.config)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from ..training.run import train

    _report(train(cfg))
    return 0


def _report(summary: dict) -> None:
    from ..training.run import launcher_rank_zero

    if launcher_rank_zero():  # DDP workers run this command too; print once
        print(format_summary(summary))


def format_summary(summary: dict) -> str:
    from ..training.module import parse_metric_name

    lines = [f"best epoch: {summary['best_epoch']} of {summary['epochs']}"]
    for split in ("val", "test"):
        for key, value in summary.get(split, {}).items():
            parsed = parse_metric_name(key)
            if parsed is None:
                continue
            _, name, unit = parsed
            lines.append(f"{split} MAE {name}: {value:.4f} {unit}")
    lines.append(f"wall time: {summary['wall_time_s'] / 60:.1f} min")
    lines.append(f"run directory: {summary['run_dir']} (config.yaml, split.npz, checkpoints/, logs/, metrics.json)")
    return "\n".join(lines)
