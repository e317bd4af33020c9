"""One process of the 2-process training test (tests/test_distributed.py), started by torchrun:

    torchrun --nproc_per_node 2 tests/distributed_worker.py OUT RUN_DIR [--resume] [--crash-after-first-checkpoint]

The tiny model's rewards are all 0 (it never writes code that parses), so, as in tests/test_trainer.py,
the two reward functions are replaced by seeded random ones and every step updates. Each process writes
OUT/problems-rank{R}.jsonl (the problems it rolled out, per step) and, at the end, OUT/weights-rank{R}.json
(a sha256 of each model's weights). With --crash-after-first-checkpoint the main process dies (os._exit)
right after writing its first checkpoint, as a killed run would; torchrun then stops the other one.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training import rollout as rollout_module  # noqa: E402
from training import trainer as trainer_module  # noqa: E402
from training.checkpoint_manager import CheckpointManager  # noqa: E402
from training.config import preset_config  # noqa: E402


def main() -> None:
    out, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    out.mkdir(parents=True, exist_ok=True)
    rollout_module.generator_reward = lambda terms, config: np.random.rand(len(terms["pass_rate"]))
    rollout_module.discriminator_reward = lambda terms, config: np.random.rand(len(terms["format_ok"]))

    real_rollouts = trainer_module.make_rollouts
    real_step = trainer_module.AdversarialTrainer.step
    steps = []

    def step_recorded(self, *args, **kwargs):  # the step number, for the rollouts of that step
        steps.append(self.state.global_step)
        return real_step(self, *args, **kwargs)

    def recorded_rollouts(generator, discriminator, sandbox, config, problems, *rest):
        row = {"step": steps[-1], "problems": [p.id for p in problems]}
        with open(out / f"problems-rank{rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        return real_rollouts(generator, discriminator, sandbox, config, problems, *rest)

    trainer_module.AdversarialTrainer.step = step_recorded

    trainer_module.make_rollouts = recorded_rollouts

    if "--crash-after-first-checkpoint" in sys.argv:
        real_save = CheckpointManager.save_checkpoint

        def save_then_die(self, *args, **kwargs):
            path = real_save(self, *args, **kwargs)
            os._exit(3)

        CheckpointManager.save_checkpoint = save_then_die

    real_train = trainer_module.AdversarialTrainer.train_full_pipeline

    def train_then_hash(self):
        summary = real_train(self)
        hashes = {}
        for role, wrapper in self.wrappers.items():
            digest = hashlib.sha256()
            for name, tensor in sorted(wrapper.model.state_dict().items()):
                digest.update(name.encode() + tensor.detach().float().cpu().numpy().tobytes())
            hashes[role] = digest.hexdigest()
        (out / f"weights-rank{rank}.json").write_text(json.dumps(hashes))
        return summary

    trainer_module.AdversarialTrainer.train_full_pipeline = train_then_hash
    # 3 problems a step over 2 processes: shares of 2 and 1; 2 PPO minibatches, so a share of 1 problem
    # leaves one process an empty minibatch in some updates
    config = preset_config("tiny", stages=["understand", "edge_cases"], problems_per_step=3, output_dir=str(run_dir),
                           frozen_dtype="bfloat16", train_last_layers=1, ppo=dict(num_minibatches=2))
    trainer_module.run_training(config, run_dir, resume="latest" if "--resume" in sys.argv else None)


if __name__ == "__main__":
    main()
