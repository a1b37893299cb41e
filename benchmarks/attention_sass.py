"""Compile our Triton attention kernels for sm_90 on a machine without a GPU and report what
ptxas made of them: registers, spill bytes, shared memory, and per loop of the SASS its length
and its local-memory (spill) loads/stores, tensor-core and async-copy instructions.

    python benchmarks/attention_sass.py [--blocks] [--config JSON] [--kernels fwd,dkdv,dq]

Uses the ptxas and nvdisasm bundled with the installed Triton; the numbers belong to that
Triton's code generation (install the GPU machine's Triton version, e.g. into a --target folder
on PYTHONPATH, to see what runs there). Shapes: bf16, head dim 128, block lists of 8 slots and
a transposed width of 64 (T=8192, 128-blocks). What it answers: did a change add spills or
instructions to a hot loop; it measures no time.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from attnsearch.kernels import triton_attention as ta  # noqa: E402
from attnsearch.kernels import triton_attention_kernels as tak  # noqa: E402

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
INT_ARGS = {"H", "T", "S", "ST", "NB", "NQB", "WINDOW", "BS"}
FP32_PTRS = {"LSE", "DELTA", "DQA"}  # O is bf16 like Q
INT_PTRS = {"LST", "LCNT", "TLST", "TCNT"}


def signature(fn, constexprs):
    """Argument types as the launcher would see them for bf16 inputs."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in FP32_PTRS:
            sig[name] = "*fp32"
        elif name in INT_PTRS:
            sig[name] = "*i32"
        elif name[0].isupper() and name not in INT_ARGS:
            sig[name] = "*bf16"
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_sm90(fn, constexprs, num_warps, num_stages):
    sig = signature(fn, constexprs)
    # pointers 16-byte aligned, strides and T multiples of 16: the usual launch specialisation
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if sig[name].startswith("*") or name == "T" or re.fullmatch(r"s[a-z]+_[bth]", name)}
    return triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 64),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def ptxas_report(ptx: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
        fh.write(ptx)
    for ptxas in ("ptxas", "ptxas-blackwell"):  # newer Tritons write PTX only the second reads
        if not os.path.exists(os.path.join(BIN, ptxas)):
            continue
        out = subprocess.run([os.path.join(BIN, ptxas), "-v", "--gpu-name", "sm_90a", fh.name,
                              "-o", os.devnull], capture_output=True, text=True).stderr
        if "Unsupported .version" not in out:
            break
    os.unlink(fh.name)
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores", out)
    if not regs:
        return {"ptxas": out.strip()[-300:]}
    return {"registers": int(regs.group(1)), "spill_store_bytes": int(spill.group(1)) if spill else None}


def sass_instructions(cubin: bytes) -> tuple[list[str], dict[str, int]]:
    """The kernel's SASS instructions in order, and the index each branch label points at."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as fh:
        fh.write(cubin)
    sass = subprocess.run([os.path.join(BIN, "nvdisasm"), "-c", fh.name],
                          capture_output=True, text=True).stdout
    os.unlink(fh.name)
    instructions, labels = [], {}
    for line in sass.splitlines():
        label = re.match(r"\s*\.(L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        ins = re.search(r"/\*[0-9a-f]{4,}\*/\s+(.*)", line)
        if ins:
            instructions.append(ins.group(1))
    return instructions, labels


def sass_loops(cubin: bytes) -> list[dict]:
    """Backward branches of the SASS as loops, with what their bodies hold."""
    return loops_of(*sass_instructions(cubin))


def loops_of(instructions: list[str], labels: dict[str, int]) -> list[dict]:
    """`sass_loops` on an already disassembled kernel (`sass_instructions`)."""
    loops = []
    for end, ins in enumerate(instructions):
        target = re.search(r"BRA\s+`?\(?\.?(L_x_\d+)", ins)
        if target and labels.get(target.group(1), end + 1) <= end:
            body = instructions[labels[target.group(1)]:end + 1]
            count = (lambda op, body=body: sum(op in x for x in body))
            loops.append({"instructions": len(body), "STL": count("STL"), "LDL": count("LDL"),
                          "HGMMA": count("HGMMA"), "LDGSTS": count("LDGSTS"),
                          "BAR.SYNC": count("BAR.SYNC")})
    return loops


def kernel_jobs(cfg: dict, blocks: bool, kernels: list[str]):
    """(name, fn, constexprs, warps, stages) for each requested kernel under config cfg."""
    # WIDE: full causal (or a window spanning two tiles) when there are no block lists
    common = {"HAS_BLOCKS": blocks, "S_PAD": 8 if blocks else 1, "PREC": "tf32", "WIDE": not blocks}
    jobs = {
        "fwd": (tak.attn_fwd_kernel, {**common, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
                                      "DK": 128, "DV": 128, "HEADS_INNER": bool(cfg["heads_inner"]),
                                      "GROUP": cfg["head_group"], "LIST_MEM": bool(cfg["list_load"])},
                cfg["num_warps"], cfg["num_stages"]),
        "dkdv": (tak.attn_bwd_dkdv_kernel,
                 {**common, "ST_PAD": 64 if blocks else 1, "BLOCK_M": cfg["BLOCK_M_DKV"],
                  "BLOCK_N": cfg["BLOCK_N_DKV"], "DK_": 128, "DV_": 128,
                  "HEADS_INNER": bool(cfg["heads_inner_bwd"]), "DQ_ATOMIC": bool(cfg["dq_atomic"]),
                  "GROUP": cfg["head_group_bwd"], "LIST_MEM": bool(cfg["list_load_dkv"]),
                  "WIDE": not blocks and bool(cfg["wide_mask_dkv"])},
                 cfg["num_warps_dkv"], cfg["num_stages_dkv"]),
        "dq": (tak.attn_bwd_dq_kernel, {**common, "BLOCK_M": cfg["BLOCK_M_DQ"], "BLOCK_N": cfg["BLOCK_N_DQ"],
                                        "DK": 128, "DV": 128, "HEADS_INNER": bool(cfg["heads_inner_bwd"]),
                                        "GROUP": cfg["head_group_bwd"],
                                        "LIST_MEM": bool(cfg["list_load_dq"]),
                                        "FUSE_DELTA": bool(cfg["fuse_delta"])},
               cfg["num_warps_dq"], cfg["num_stages_dq"]),
    }
    return [(name, *jobs[name]) for name in kernels]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="{}", help="JSON over the Hopper default config")
    parser.add_argument("--blocks", action="store_true", help="the block-list (HAS_BLOCKS) variants")
    parser.add_argument("--kernels", default="fwd,dkdv,dq")
    args = parser.parse_args()
    cfg = {**ta._HOPPER, **json.loads(args.config)}
    print(f"triton {triton.__version__}, sm_90, {'block lists' if args.blocks else 'no block lists'}")
    for name, fn, constexprs, warps, stages in kernel_jobs(cfg, args.blocks, args.kernels.split(",")):
        compiled = compile_sm90(fn, constexprs, warps, stages)
        report = {**ptxas_report(compiled.asm["ptx"]), "shared_bytes": compiled.metadata.shared}
        print(f"{name}: {report}")
        for i, loop in enumerate(sass_loops(compiled.asm["cubin"])):
            print(f"  loop {i}: {loop}")


if __name__ == "__main__":
    main()
