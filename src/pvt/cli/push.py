"""`pvt push RUN_OR_FILE OWNER/NAME [--to hf|timm]` (or `--repo-id OWNER/NAME`): publish a model on the HF hub, with a model
card; `--dry-run` writes the exact folder instead of uploading it."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .command import command


def register(sub) -> None:
    """Add ``push`` to the pvt parser."""
    p = command(sub, "push", run,
            "upload a trained model to the HF hub (transformers or timm layout) with a model card",
            "Write the weights of RUN_OR_FILE (a pvt train run folder: its best, else last, checkpoint, with its "
            "metrics.jsonl and config.yaml; or any checkpoint file pvt reads) in HF transformers' or timm's layout, "
            "with a README.md model card (variant, paper, training config, metrics, how to load it in pvt, timm "
            "and transformers), and upload the folder to OWNER/NAME with huggingface_hub (log in with "
            "`hf auth login` or pass --token). --dry-run writes the folder and uploads nothing.")
    p.add_argument("source", metavar="RUN_OR_FILE", help="a run folder of pvt train, or a checkpoint file")
    p.add_argument("repo", nargs="?", metavar="OWNER/NAME", help="the hub model repository (created if absent)")
    p.add_argument("--repo-id", metavar="OWNER/NAME", help="the same as the positional OWNER/NAME")
    p.add_argument("--to", choices=("hf", "timm"), default="hf", help="layout of the weights (default: hf)")
    p.add_argument("--dry-run", action="store_true", help="write the folder that would be uploaded; upload nothing")
    p.add_argument("--out", metavar="DIR", help="where to write the folder (default with --dry-run: ./NAME; "
                                                "otherwise a temporary folder)")
    p.add_argument("--model", metavar="NAME", help="variant name, when the checkpoint records none")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token", help="HF access token (default: the one `hf auth login` stored)")
    p.add_argument("--force", action="store_true", help="replace the --out folder if it is not empty")


def run(args: argparse.Namespace) -> int:
    from ..tools.publish import prepare_push
    from ..weights.hub import check_repo_id, check_upload, upload

    if args.repo and args.repo_id and args.repo != args.repo_id:
        raise ValueError(f"two repositories given: {args.repo} and --repo-id {args.repo_id}; give one")
    if not (args.repo or args.repo_id):
        raise ValueError("the hub repository is required: pvt push RUN_OR_FILE OWNER/NAME (or --repo-id OWNER/NAME)")
    repo = check_repo_id(args.repo or args.repo_id)
    if not args.dry_run:
        check_upload(repo)  # before the export: without network, say so at once
    if args.dry_run:
        out = Path(args.out or repo.split("/")[1])
        done = prepare_push(args.source, repo, out, to=args.to, model=args.model, force=args.force)
        print(f"dry run: wrote the folder that would be uploaded to hf-hub:{repo}: {out} "
              f"({', '.join(sorted(p.name for p in done.files))}); upload it with `hf upload {repo} {out}`")
        for note in done.notes:
            print(f"note: {note}")
        return 0
    with tempfile.TemporaryDirectory(prefix="pvt-push-") as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "repo"
        done = prepare_push(args.source, repo, out, to=args.to, model=args.model, force=args.force)
        url = upload(out, repo, private=args.private, token=args.token)
    print(f"pushed {', '.join(sorted(p.name for p in done.files))} to hf-hub:{repo}: {url}")
    for note in done.notes:
        print(f"note: {note}")
    return 0
