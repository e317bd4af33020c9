"""Check the CUDA path end to end with the tiny model: device placement, dtypes, bf16 autocast, LoRA,
checkpoint and inference from it. Run on a machine with a GPU:

    python bench/check_cuda.py [--out DIR]

The tiny random model never writes parsing code, so its real rewards are all 0 and nothing would update;
this script draws random rewards instead, to exercise the updates on the GPU (the machinery, not skill).
Prints one line per check and exits non-zero on the first failure.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.problems import load_problem_set  # noqa: E402
from training import rollout  # noqa: E402
from training.checkpoint_manager import CheckpointManager  # noqa: E402
from training.config import preset_config  # noqa: E402
from training.trainer import AdversarialTrainer  # noqa: E402


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        sys.exit(1)


def run(label: str, out: Path, **overrides) -> Path:
    config = preset_config("tiny", stages=["understand"], device="cuda", **overrides)
    run_dir = out / label
    t = time.perf_counter()
    trainer = AdversarialTrainer(config, load_problem_set("examples")[:2], run_dir=run_dir,
                                 checkpoint_manager=CheckpointManager(run_dir))
    model = trainer.generator.model
    devices = {p.device.type for p in model.parameters()}
    dtypes = {str(p.dtype) for p in model.parameters()}
    check(f"{label}: parameters on cuda", devices == {"cuda"}, f"({dtypes})")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.train_full_pipeline()
    rows = [m for m in [trainer.state.last_metrics] if m]
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    check(f"{label}: generator weights changed", changed)
    loss = rows[-1].get("ppo/loss", float("nan"))
    check(f"{label}: finite PPO loss", np.isfinite(loss), f"(loss {loss:.4f}, kl_ref {rows[-1].get('ppo/kl_ref'):.2e},"
          f" {time.perf_counter() - t:.1f} s)")
    trainer.close()
    return run_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="check_cuda-"))
    check("cuda available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    check("bf16 supported", torch.cuda.is_bf16_supported())
    rollout.generator_reward = lambda terms, config: np.random.rand(len(terms["pass_rate"]))
    rollout.discriminator_reward = lambda terms, config: np.random.rand(len(terms["format_ok"]))

    run_dir = run("bf16-weights", out)  # dtype auto: bf16 weights on the GPU
    run("fp32-weights-bf16-autocast", out, dtype="float32", ppo={"precision": "bf16"})
    try:
        import peft  # noqa: F401
        run("lora", out, dtype="float32", lora_rank=4, lora_targets=["q_proj", "v_proj"])
    except ImportError:
        print("skip lora: peft is not installed")

    from inference.inference_engine import InferenceConfig, InferenceEngine

    config = InferenceConfig(stage_tokens=8, code_tokens=16, test_tokens=16)
    with InferenceEngine.from_checkpoint(run_dir, which="latest", device="cuda", config=config) as engine:
        check("inference: generator on cuda", engine.generator.device.type == "cuda")
        result = engine.solve_problem(load_problem_set("examples")[0], execute=True, num_candidates=2)
        check("inference: a result", result.problem_id == "reverse_words", f"(timings {result.timings['total']:.2f} s)")


if __name__ == "__main__":
    main()
