import json
import math

import pytest
import torch

from attnsearch.evaluators.corpus import CorpusError, bits_per_byte, load_corpus


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_user_folder_splits_by_file_and_reads_bytes(tmp_path):
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}: " + "hello world " * 20)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.md").write_text("nested file é")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00\x80" * 10)      # not UTF-8: skipped
    corpus = load_corpus(tmp_path)
    assert corpus.documents == 41
    assert corpus.train.numel() > 0 and corpus.validation.numel() > 0
    text = bytes(corpus.train.tolist()) + bytes(corpus.validation.tolist())
    assert b"hello world" in text and "é".encode() in text and b"\xff\xfe" not in text
    # a file lands wholly in one split
    for i in range(40):
        doc = f"document {i}: ".encode()
        assert (doc in bytes(corpus.train.tolist())) != (doc in bytes(corpus.validation.tolist()))
    # same folder, same split (and cached per process)
    assert load_corpus(tmp_path) is corpus


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"text": f"record number {i} " * 5, "id": i}) for i in range(30)]
    path.write_text("\n".join(lines) + "\n\n")
    corpus = load_corpus(path)
    assert corpus.documents == 30
    whole = bytes(corpus.train.tolist()) + bytes(corpus.validation.tolist())
    assert b"record number 29" in whole and b'"id"' not in whole


def test_single_text_file_holds_out_its_tail(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("abcdefghij" * 100)
    corpus = load_corpus(path)
    assert corpus.train.numel() + corpus.validation.numel() >= 1000
    assert corpus.validation.numel() >= 50


def test_sampled_targets_are_next_bytes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(chr(97 + i % 26) for i in range(3000)))
    corpus = load_corpus(path)
    inputs, targets, mask = corpus.sample_batch(32, 4, _gen(1))
    assert inputs.shape == targets.shape == mask.shape == (4, 32) and bool(mask.all())
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    again = corpus.sample_batch(32, 4, _gen(1))
    assert torch.equal(inputs, again[0])
    batches = corpus.validation_batches(16, 3, 10_000)
    assert batches and all(b[0].shape[1] == 16 for b in batches)
    assert torch.equal(batches[0][0], corpus.validation_batches(16, 3, 10_000)[0][0])


def _write(name, data):
    def make(root):
        path = root / name
        path.write_bytes(data)
        return path
    return make


def _empty_folder(root):
    (root / "d").mkdir()
    return root / "d"


@pytest.mark.parametrize("make", [
    lambda p: p / "nope",
    _write("empty.txt", b""),
    _empty_folder,
    _write("bad.txt", b"ok \xff\xfe bad"),
    _write("x.jsonl", b'{"text": 1}\n'),
    _write("y.jsonl", b"not json\n"),
    _write("z.jsonl", b"\n\n"),
], ids=["missing", "empty-file", "empty-folder", "undecodable", "no-text-field", "not-json", "blank-jsonl"])
def test_bad_paths_give_clear_corpus_errors(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(CorpusError) as err:
        load_corpus(path)
    assert isinstance(err.value, ValueError)
    assert str(path.name) in str(err.value) or "no text" in str(err.value)


def test_stdlib_default_corpus_is_python_source():
    corpus = load_corpus(max_bytes=200_000)
    assert corpus.name.startswith("python-stdlib:")
    text = bytes(corpus.train.tolist())
    assert b"def " in text and b"import" in text
    assert 3.0 < corpus.unigram_bits() < 6.0
    assert corpus.validation.numel() > 0


def test_bits_per_byte():
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        load_corpus(max_bytes=0)
