"""``mtlkit data check|prepare``: validate a dataset folder; convert the official NYUv2 release."""

from __future__ import annotations

import argparse
import json


def _cmd_check(args: argparse.Namespace) -> int:
    """Validate every file; print the summary and one line per problem; 1 when any problem."""
    from mtlkit.data.check import check_dataset

    report = check_dataset(args.name, args.root, num_classes=args.num_classes, progress=not args.quiet)
    if args.json:
        print(
            json.dumps(
                {
                    "dataset": report.name,
                    "root": str(report.root),
                    "counts": report.counts,
                    "labelled": report.labelled,
                    "notes": report.notes,
                    "problems": report.problems,
                    "ok": report.ok,
                },
                indent=2,
            )
        )
    else:
        print(report.format(max_problems=args.max_problems))
    return 0 if report.ok else 1


def _window(text: str) -> int | str:
    """``--normal-window``: 'adaptive' or an integer."""
    if text == "adaptive":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an odd integer or 'adaptive', got {text!r}") from None


def _cmd_prepare(args: argparse.Namespace) -> int:
    """Convert a dataset release into the ``.npy`` layout (NYUv2 labeled .mat)."""
    from mtlkit.data.prepare_nyuv2 import prepare_nyuv2

    counts = prepare_nyuv2(
        args.labeled_mat,
        args.class_map,
        args.out,
        splits=args.splits,
        height=args.height,
        width=args.width,
        window=args.normal_window,
        overwrite=args.overwrite,
        progress=not args.quiet,
        depth=args.depth,
        smoothing=args.normal_smoothing,
    )
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group (``check``, ``prepare``) to the ``mtlkit`` parser."""
    d = subparsers.add_parser(
        "data",
        help="check a dataset folder or prepare one from an official release",
        description="Dataset tools: `check` validates a .npy-layout folder before "
        "training; `prepare` converts an official release into that layout.",
    )
    sub = d.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    c = sub.add_parser(
        "check",
        help="validate every file of a dataset folder",
        description="Check counts per split and every file's shape, dtype and values (labels "
        "in range or -1, no NaN/inf, unit normals where valid). Prints a summary table and one "
        "line per problem naming the file; exits 1 when there is any problem.",
    )
    c.add_argument("name", help="dataset name: nyuv2, cityscapes, scenes or folder (your own, with tasks.yaml)")
    c.add_argument("root", help="dataset folder (holding train/ and val/)")
    c.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="segmentation classes to check labels against (default: the dataset's; cityscapes "
        "checks both label_7 and label_19 unless given)",
    )
    c.add_argument("--max-problems", type=int, default=50, help="problems listed at most (default 50)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "prepare",
        help="convert an official dataset release into the .npy layout",
        description="Convert a dataset release. Only `nyuv2` is supported: the official "
        "labeled release (nyu_depth_v2_labeled.mat, MATLAB v7.3) with the 894->40->13 class "
        "mapping files; normals are estimated from depth with the Kinect intrinsics.",
    )
    p.add_argument("dataset", choices=["nyuv2"], help="which dataset to prepare")
    p.add_argument("--labeled-mat", required=True, help="path of nyu_depth_v2_labeled.mat")
    p.add_argument(
        "--class-map",
        required=True,
        nargs="+",
        help="folder holding classMapping40.mat and class13Mapping.mat (and splits.mat), or those "
        "files, or one .npy/.txt file of 894 class ids in 0..12 (-1 = ignore)",
    )
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--splits", default=None, help="splits.mat with trainNdxs/testNdxs (default: from --class-map)")
    p.add_argument("--height", type=int, default=288, help="output height (default 288)")
    p.add_argument("--width", type=int, default=384, help="output width (default 384)")
    p.add_argument(
        "--normal-window",
        type=_window,
        default="adaptive",
        help="plane-fit window of the normals: an odd size, or 'adaptive' (default: 4 px per metre of depth, "
        "5 to 31; see bench/nyuv2_normals.py)",
    )
    p.add_argument(
        "--normal-smoothing",
        type=int,
        default=11,
        help="odd window of the bilateral depth smoothing before the normals' plane fit, 0 for none (default 11)",
    )
    p.add_argument(
        "--depth",
        choices=["filled", "raw"],
        default="filled",
        help="filled: the release's in-painted depths (default; what MTAN's release holds); raw: rawDepths, "
        "with depth 0 and normal 0 where the sensor measured nothing (the losses and metrics skip them)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)
