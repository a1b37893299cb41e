"""Real text for byte-level language modelling, available offline.

Default corpus: the Python standard library's source files on this machine. User corpus: a text
file, a folder of text files, or a JSON-lines file with a "text" field per line. Documents are
split into train/validation deterministically by a hash of their name (relative path or line
number), tokens are bytes 0..255, and validation loss is reported in bits per byte.

Loading is bounded (at most `max_bytes` are read) and cached per process, so a worker running many
proxy trials reads the files once.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MAX_BYTES = 4 * 2 ** 20
VALIDATION_PERCENT = 10
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class CorpusError(ValueError):
    """The corpus path is missing, empty, or not readable as UTF-8 text."""


@dataclass(frozen=True)
class Corpus:
    name: str
    train: torch.Tensor        # uint8 [N_train]
    validation: torch.Tensor   # uint8 [N_val]
    documents: int

    def split(self, split: str) -> torch.Tensor:
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        return self.train if split == "train" else self.validation

    def sample_batch(self, seq_len: int, batch: int, generator: torch.Generator, split: str = "train"):
        """Random windows: (inputs [B, T], next-byte targets [B, T], all-true mask [B, T])."""
        data = self.split(split)
        if data.numel() < seq_len + 1:
            raise CorpusError(f"{self.name}: {split} split has {data.numel()} bytes, fewer than "
                              f"seq_len + 1 = {seq_len + 1}")
        starts = torch.randint(data.numel() - seq_len, (batch,), generator=generator)
        return _windows(data, starts, seq_len)

    def validation_batches(self, seq_len: int, batch: int, max_tokens: int):
        """Fixed windows spread evenly over the validation split (the same ones every call)."""
        data = self.validation
        if data.numel() < seq_len + 1:
            raise CorpusError(f"{self.name}: validation split has {data.numel()} bytes, fewer than "
                              f"seq_len + 1 = {seq_len + 1}")
        count = max(1, min(max_tokens // seq_len, (data.numel() - 1) // seq_len))
        starts = torch.linspace(0, data.numel() - seq_len - 1, count).long()
        return [_windows(data, starts[i:i + batch], seq_len) for i in range(0, count, batch)]

    def unigram_bits(self) -> float:
        """Entropy of the train split's byte distribution: the bits per byte of a model that ignores
        context, used as the zero point of the LM score."""
        counts = torch.bincount(self.train.long(), minlength=256).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log2()).sum())


def _windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int):
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:], torch.ones(len(starts), seq_len, dtype=torch.bool)


def bits_per_byte(mean_nats_per_byte: float) -> float:
    return mean_nats_per_byte / math.log(2)


def _is_validation(name: str) -> bool:
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") % 100 < VALIDATION_PERCENT


def _hash_order(names):
    return sorted(names, key=lambda n: hashlib.sha256(n.encode("utf-8")).hexdigest())


def _decode_check(raw: bytes, where: str) -> bytes:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{where} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    return raw


def _stdlib_documents():
    """(relative path, absolute path) of the standard library's .py files, site-packages excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("site-packages/") or "/site-packages/" in rel:
            continue
        docs.append((rel, path))
    return root, docs


def _folder_documents(root: Path):
    return [(p.relative_to(root).as_posix(), p) for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def _read_files(named_paths, max_bytes: int, skip_undecodable: bool):
    """Read files in hash order until max_bytes; returns [(name, bytes)] (undecodable skipped or raised)."""
    by_name = dict(named_paths)
    out, total = [], 0
    for name in _hash_order(by_name):
        if total >= max_bytes:
            break
        try:
            with open(by_name[name], "rb") as fh:
                raw = fh.read(max_bytes - total)
        except OSError as err:
            raise CorpusError(f"cannot read {by_name[name]}: {err.strerror}") from None
        try:
            _decode_check(raw, str(by_name[name]))
        except CorpusError:
            if skip_undecodable and raw:
                continue
            raise
        if raw:
            out.append((name, raw))
            total += len(raw)
    return out


def _read_jsonl(path: Path, max_bytes: int):
    out, total = [], 0
    try:
        fh = open(path, "rb")
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror}") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            if total >= max_bytes:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CorpusError(f"{path}:{lineno}: not a JSON object ({err})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise CorpusError(f'{path}:{lineno}: each line needs a string "text" field')
            raw = record["text"].encode("utf-8")[: max_bytes - total]
            if raw:
                out.append((f"line {lineno}", raw))
                total += len(raw)
    return out


def _assemble(name: str, documents) -> Corpus:
    if not documents:
        raise CorpusError(f"{name}: no text found (empty file, empty folder, or no non-empty documents)")
    train = [raw for doc, raw in documents if not _is_validation(doc)]
    val = [raw for doc, raw in documents if _is_validation(doc)]
    if not train or not val:
        # Too few documents for a split by name: hold out the tail of the text instead.
        joined = b"\n".join(raw for _, raw in documents)
        cut = len(joined) - max(1, len(joined) * VALIDATION_PERCENT // 100)
        train, val = [joined[:cut]], [joined[cut:]]
    as_tensor = lambda parts: torch.frombuffer(bytearray(b"\n".join(parts)), dtype=torch.uint8).clone()
    return Corpus(name=name, train=as_tensor(train), validation=as_tensor(val), documents=len(documents))


@functools.lru_cache(maxsize=8)
def _load_cached(path: str | None, max_bytes: int) -> Corpus:
    if path is None:
        root, docs = _stdlib_documents()
        return _assemble(f"python-stdlib:{root}", _read_files(docs, max_bytes, skip_undecodable=True))
    p = Path(path)
    if not p.exists():
        raise CorpusError(f"corpus path {path} does not exist (give a text file, a folder of text "
                          "files, or a .jsonl file with a 'text' field)")
    if p.is_dir():
        docs = _folder_documents(p)
        if not docs:
            raise CorpusError(f"corpus folder {path} contains no files")
        read = _read_files(docs, max_bytes, skip_undecodable=True)
        if not read and any(fp.stat().st_size for _, fp in docs):
            raise CorpusError(f"corpus folder {path}: no file is UTF-8 text")
        return _assemble(str(p), read)
    if p.suffix.lower() in JSONL_SUFFIXES:
        return _assemble(str(p), _read_jsonl(p, max_bytes))
    return _assemble(str(p), _read_files([(p.name, p)], max_bytes, skip_undecodable=False))


def load_corpus(path=None, max_bytes: int = DEFAULT_MAX_BYTES) -> Corpus:
    """The corpus at `path` (None: the Python standard library), read once per process."""
    if not isinstance(max_bytes, int) or max_bytes < 2:
        raise ValueError(f"max_bytes must be an integer >= 2, got {max_bytes!r}")
    key = None if path is None else str(Path(path).expanduser().resolve())
    return _load_cached(key, max_bytes)
