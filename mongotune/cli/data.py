"""``mongotune data ...``: prepare, inspect, verify and list dataset caches.

A thin layer: parse options, call :mod:`mongotune.data`, print with rich.
Mount it in the main CLI with ``app.add_typer(data_app, name="data")``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from mongotune.errors import UserError

data_app = typer.Typer(
    name="data",
    help="Download, prepare, inspect and list datasets (cached as uint8 .npy files).",
    no_args_is_help=True,
    add_completion=False,
)

err = Console(stderr=True)


def _out() -> Console:
    """A console on the current stdout; wide when it is not a terminal, so
    that piped tables are not squeezed to 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=200)

DatasetArg = Annotated[str, typer.Argument(help="digits, fashion_mnist, mnist, cifar10, cifar100, folder or npz.")]
SizeOpt = Annotated[Optional[int], typer.Option("--size", help="Square side after resizing (default: native size).")]
InterpOpt = Annotated[str, typer.Option("--interpolation", help="area, linear, cubic, lanczos or nearest.")]
ValOpt = Annotated[float, typer.Option("--val-fraction", help="Share of the training set held out for validation.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the validation split.")]
ChannelsOpt = Annotated[Optional[int], typer.Option("--channels", help="1 or 3 (default: native).")]
SourceOpt = Annotated[Optional[Path], typer.Option("--source", help="Files downloaded by hand, an image folder or an .npz file.")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache folder (default: $MONGOTUNE_DATA_DIR or ~/.cache/mongotune/data).")]
LabelOpt = Annotated[str, typer.Option("--label-mode", help="cifar100 only: fine or coarse labels as y.")]


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


#: Stages whose counts are bytes (the others count images or files).
_BYTE_STAGES = ("download", "verify", "hash")


class _Amount(ProgressColumn):
    """``done/total`` in bytes or in items, whichever the stage counts."""

    def render(self, task) -> Text:
        done, total = int(task.completed), task.total
        if task.fields.get("bytes"):
            text = _human(done) + (f"/{_human(int(total))}" if total else "")
        else:
            text = f"{done:,}" + (f"/{int(total):,}" if total else "")
        return Text(text, style="progress.download")


class _RichProgress:
    """Adapts the library's ``progress(stage, done, total)`` to rich bars."""

    def __init__(self, bar: Progress):
        self.bar = bar
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        task = self.tasks.get(stage)
        if task is None:
            task = self.bar.add_task(stage, total=total, bytes=stage.startswith(_BYTE_STAGES))
            self.tasks[stage] = task
        self.bar.update(task, completed=done, total=total)


@contextlib.contextmanager
def _progress() -> Iterator[_RichProgress | None]:
    if not err.is_terminal:  # no bars in logs and pipes
        yield None
        return
    bar = Progress(
        TextColumn("{task.description:<34}"), BarColumn(), _Amount(),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    )
    with bar:
        yield _RichProgress(bar)


def _spec(dataset: str, size, interpolation, val_fraction, seed, channels, source, label_mode):
    from mongotune.data import DataSpec

    return DataSpec(name=dataset, size=size, channels=channels, interpolation=interpolation,
                    val_fraction=val_fraction, seed=seed,
                    source=str(source) if source is not None else None, label_mode=label_mode)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _summary(ds) -> Table:
    table = Table(show_header=True)
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("shape")
    table.add_column("bytes", justify="right")
    for split in ("train", "val", "test"):
        x, _ = ds.split(split)
        table.add_row(split, str(len(x)), "x".join(map(str, x.shape[1:])), _human(x.nbytes))
    return table


@data_app.command("prepare")
def prepare_cmd(
    dataset: DatasetArg,
    size: SizeOpt = None,
    interpolation: InterpOpt = "area",
    val_fraction: ValOpt = 0.1,
    seed: SeedOpt = 0,
    channels: ChannelsOpt = None,
    source: SourceOpt = None,
    cache_dir: CacheOpt = None,
    label_mode: LabelOpt = "fine",
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the cache is intact.")] = False,
) -> None:
    """Download (or read --source), verify, resize, split and cache a dataset."""
    from mongotune import data

    with _user_errors():
        spec = _spec(dataset, size, interpolation, val_fraction, seed, channels, source, label_mode)
        with _progress() as progress:
            ds = data.prepare(spec, cache_dir, progress=progress, force=force)
    typer.echo(ds.spec.cache_key())
    _out().print(_summary(ds))
    typer.echo(f"classes: {ds.num_classes}")
    typer.echo(f"cache: {ds.path}")


@data_app.command("inspect")
def inspect_cmd(
    dataset: DatasetArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the PNGs.")],
    size: SizeOpt = None,
    interpolation: InterpOpt = "area",
    val_fraction: ValOpt = 0.1,
    seed: SeedOpt = 0,
    channels: ChannelsOpt = None,
    source: SourceOpt = None,
    cache_dir: CacheOpt = None,
    label_mode: LabelOpt = "fine",
    per_class: Annotated[int, typer.Option("--per-class", help="Samples per class in samples.png.")] = 8,
    no_tf: Annotated[bool, typer.Option("--no-tf", help="Skip the TensorFlow resize comparison.")] = False,
) -> None:
    """Write PNGs: samples per class, resize methods compared, label distribution."""
    from mongotune import data

    with _user_errors():
        spec = _spec(dataset, size, interpolation, val_fraction, seed, channels, source, label_mode)
        with _progress() as progress:
            paths = data.inspect(spec, out_dir, cache_dir, progress=progress,
                                 per_class=per_class, compare_tf=not no_tf)
    for path in paths:
        typer.echo(str(path))


@data_app.command("verify")
def verify_cmd(
    dataset: DatasetArg,
    size: SizeOpt = None,
    interpolation: InterpOpt = "area",
    val_fraction: ValOpt = 0.1,
    seed: SeedOpt = 0,
    channels: ChannelsOpt = None,
    source: SourceOpt = None,
    cache_dir: CacheOpt = None,
    label_mode: LabelOpt = "fine",
) -> None:
    """Hash every file of a prepared cache and compare with its meta.json."""
    from mongotune import data

    with _user_errors():
        spec = _spec(dataset, size, interpolation, val_fraction, seed, channels, source, label_mode)
        with _progress() as progress:
            meta = data.verify(spec, cache_dir, progress=progress)
    typer.echo(f"ok: {meta['key']} (content hash {meta['content_hash'][:16]}...)")


@data_app.command("list")
def list_cmd(cache_dir: CacheOpt = None) -> None:
    """Show prepared caches and downloaded files with their sizes."""
    from mongotune import data

    with _user_errors():
        entries = data.list_cached(cache_dir)
        downloads = data.list_downloads(cache_dir)
        root = cache_dir if cache_dir is not None else data.default_cache_dir()
    if not entries and not downloads:
        typer.echo(f"nothing cached in {root}")
        return
    if entries:
        typer.echo(f"prepared datasets in {root}:")
        table = Table()
        for col in ("key", "train/val/test", "image", "on disk", "created", "status"):
            table.add_column(col, justify="right" if col == "on disk" else "left",
                             no_wrap=col != "status")
        for e in entries:
            shapes = e.get("shapes") or {}
            counts = "/".join(str(shapes[s][0]) for s in ("train", "val", "test") if s in shapes)
            image = "x".join(map(str, shapes["train"][1:])) if "train" in shapes else "-"
            created = e.get("created") or "-"
            with contextlib.suppress(ValueError, TypeError):
                created = _dt.datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M")
            table.add_row(e["key"], counts or "-", image, _human(e["bytes"]), created, e["status"])
        _out().print(table)
    if downloads:
        typer.echo("downloaded files:")
        table = Table()
        for col in ("dataset", "file", "size"):
            table.add_column(col, justify="right" if col == "size" else "left")
        for d in downloads:
            table.add_row(d["name"], d["file"] + (" (partial)" if d["partial"] else ""), _human(d["bytes"]))
        _out().print(table)
