"""``pile-jax``: score | ensemble | train | eval | export | run | study.

Every subcommand that takes a config accepts ``--set key.path=value`` overrides (values parsed
as YAML) and ``--preset NAME`` for the config's presets.
"""

from __future__ import annotations

import argparse
import sys


def _add_config_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set students.seeds=[0] (repeatable)")
    p.add_argument("--preset", dest="presets", action="append", default=[], metavar="NAME",
                   help="merge a preset section of the config (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from pile_jax.models.tokenize import DEFAULT_MAX_LENGTH

    parser = argparse.ArgumentParser(prog="pile-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="end-to-end: BM25, teachers, ensembles, students, evaluation, report")
    _add_config_args(p)
    p.add_argument("--quick", action="store_true", help="the config's 'quick' preset: same pipeline, minutes")
    p.add_argument("--data", help="a collection folder (docs.jsonl, queries.jsonl, qrels.tsv, splits.json)")
    p.add_argument("--out", default=None, help="output folder (default runs/<config name>[_quick])")

    p = sub.add_parser("score", help="score candidate lists with teachers and write teacher score files")
    p.add_argument("--collection", required=True, help="shipped name (cranfield, scifact) or folder")
    p.add_argument("--candidates", help="TREC run file with the candidates (default: BM25 top --depth)")
    p.add_argument("--depth", type=int, default=100, help="candidates per query (BM25 depth or run cut-off)")
    p.add_argument("--split", default="all", help="queries to score: train | dev | test | all")
    p.add_argument("--teacher", action="append", required=True, metavar="NAME=SPEC",
                   help="NAME=bm25 | NAME=biencoder:MODEL | NAME=MODEL_DIR[:LAYERS] (HF cross-encoder folder); repeatable")
    p.add_argument("--out", required=True, help="folder for <NAME>.tsv teacher score files")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    p.add_argument("--batch-size", type=int, default=64)

    p = sub.add_parser("ensemble", help="ensemble teacher score files (pile, mean, ...) and print the teacher report")
    p.add_argument("--collection", required=True)
    p.add_argument("--teachers", nargs="+", required=True, help="teacher score files (qid docid score)")
    p.add_argument("--method", default="pile", help="pile | mean | weighted_mean | max | zscore_mean | rank_average | best_teacher_per_list")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="ensemble option, e.g. num_iters=20")
    p.add_argument("--split", default="all")
    p.add_argument("--standardize", default="global", choices=("global", "none"))
    p.add_argument("--unjudged", default="zero", choices=("zero", "ignore"))
    p.add_argument("--out", required=True, help="output score file (qid docid score)")
    p.add_argument("--accept-outliers", action="store_true",
                   help="accept a teacher score far outside the rest of its file (default: an error naming the line)")

    p = sub.add_parser("train", help="train a student from labels and teacher scores (config-driven)")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="work folder (checkpoints, TensorBoard, export)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--force-resume", action="store_true",
                   help="with --resume: continue even though the student, objective, teachers, standardisation or "
                        "learning rate changed (a changed batch size, seed or data setting is still refused)")

    p = sub.add_parser("eval", help="metrics of a TREC run file, or re-rank candidates with a model")
    p.add_argument("--collection", required=True)
    p.add_argument("--run", required=True, help="TREC run file to evaluate (or candidates to re-rank with --model)")
    p.add_argument("--model", help="HF cross-encoder folder: re-rank the run's candidates first")
    p.add_argument("--split", default="test")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH)
    p.add_argument("--out-run", help="where to write the re-ranked run (with --model)")

    p = sub.add_parser("export", help="export a trained student (work folder) to a Hugging Face folder")
    p.add_argument("workdir", help="a `pile-jax train` work folder")
    p.add_argument("--out", required=True)
    p.add_argument("--which", default="best", choices=("best", "latest"))

    p = sub.add_parser("study", help="a grid of objectives/students over seeds (loss study, cross-architecture KD)")
    _add_config_args(p)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                   help="combine the output folders of this config run on disjoint study.cells into --out "
                        "(significance recomputed over all cells); trains nothing")
    for p in sub.choices.values():  # logging options on every subcommand (pile_jax.logs)
        g = p.add_argument_group("logging")
        g.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                       help="pile_jax's log level on stderr and in <out>/log.txt (default INFO)")
        g.add_argument("-q", "--quiet", action="store_true",
                       help="only warnings and errors (same as --log-level WARNING); no progress bars")
    return parser


def _enable_compilation_cache() -> None:
    """Persistent XLA cache (``$PILE_JAX_CACHE``, default ~/.cache/pile_jax/xla): a second run of
    the same job skips most compilation, which dominates short CPU runs."""
    import os

    import jax

    path = os.environ.get("PILE_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "pile_jax", "xla"))
    if path and path != "off":
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv: list[str] | None = None) -> int:
    from pile_jax.logs import setup_logging, silence_transformers_banner

    silence_transformers_banner()  # before anything imports transformers
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, quiet=args.quiet).debug("pile-jax %s: arguments %s", args.command, vars(args))
    _enable_compilation_cache()
    from pile_jax import jobs
    from pile_jax.config import ConfigError
    from pile_jax.data.errors import DataError
    from pile_jax.train.loop import Preempted

    try:
        return int(getattr(jobs, f"cmd_{args.command}")(args) or 0)
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"pile-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        # an output path that cannot be written: read-only, a file where a folder is needed, ...
        print(f"pile-jax {args.command}: error: cannot write {getattr(e, 'filename', None) or ''}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        # the train loop's non-finite stop (max_nonfinite_steps): a config problem in practice
        print(f"pile-jax {args.command}: error: training stopped: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"pile-jax {args.command}: {_preempted_message(args.command, str(e))}", file=sys.stderr)
        return e.exit_code   # 75 (EX_TEMPFAIL): a supervisor relaunches (train: with --resume)
    except OSError as e:
        # a write that failed (full disk, quota, ...): the path and the reason, no traceback
        print(f"pile-jax {args.command}: error: {_os_error_message(e)}", file=sys.stderr)
        return 1


#: what to do after a SIGTERM stop, per command (only `train` has --resume)
RESUME_ADVICE = {
    "train": "rerun with --resume to continue",
    "run": "rerun the same command to continue (teacher files are reused and each student resumes from its "
           "checkpoint while its config is unchanged)",
    "study": "rerun the same command (teacher files are reused; the students train again)",
}


def _preempted_message(command: str, detail: str) -> str:
    """The one line printed after a SIGTERM stop: where the checkpoint is and how to continue."""
    detail = detail.split("; rerun with")[0]
    if detail.startswith("preempted (SIGTERM): "):
        detail = detail[len("preempted (SIGTERM): "):]
    return f"preempted (SIGTERM): {detail}; {RESUME_ADVICE.get(command, 'rerun the same command')}"


def _os_error_message(e: OSError) -> str:
    """``cannot write PATH: reason`` (or the error's own text when it names no path)."""
    import errno

    path = getattr(e, "filename", None)
    reason = e.strerror or (errno.errorcode.get(e.errno, "") if e.errno else "") or str(e)
    if not path:
        return " ".join(str(e).split())
    writing = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
    return f"cannot write {path}: {reason}" if writing else f"{path}: {reason}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
