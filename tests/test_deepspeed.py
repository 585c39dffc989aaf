"""DeepSpeed ZeRO really trains the phi-1 model, with the ZeRO section our deepspeed trainer config builds.

Lightning's DeepSpeed strategy refuses to fit without CUDA, so on a CPU machine this drives the same
engine through ``deepspeed.initialize`` in a fresh process. DeepSpeed's CPU accelerator compiles its
shared-memory comm op on first use (~30-40 s on 2 cores), and torch's build directory names the venv's
paths, so every fresh clone compiled it again: the op is kept per machine in ``DS_OP_CACHE`` (like the
Makefile's llama-server), keyed by the versions and the op's sources, and loaded from there. On a GPU
machine `trainer=deepspeed` runs the same thing through Lightning.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # DeepSpeed starts and trains (~30 s; the op's first build on a machine +40 s)
DS_OP_CACHE = Path.home() / ".cache" / "textbooks" / "deepspeed-ops"

# Runs in the training process before deepspeed.initialize: DeepSpeed's shm comm op from the machine's cache
# (built there the first time, by DeepSpeed's own builder), so that initialize loads that module.
SHM_OP = r"""
import hashlib, importlib.util, os, shutil, sys, tempfile
from pathlib import Path


def shm_op_from_cache(cache):
    import deepspeed, torch
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops.op_builder.builder import OpBuilder

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return  # no such op here (a GPU accelerator): nothing to build
    h = hashlib.sha256(repr((deepspeed.__version__, torch.__version__, sys.version_info[:2],
                             builder.cxx_args())).encode())
    files = [Path(builder.deepspeed_src_path(s)) for s in builder.sources()]
    for d in builder.include_paths():
        files += sorted(p for p in Path(builder.deepspeed_src_path(d)).rglob("*") if p.is_file())
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    so = Path(cache) / f"{builder.NAME}-{h.hexdigest()[:16]}.so"
    if not so.is_file():
        os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="ds-ops-")
        built = builder.load()
        so.parent.mkdir(parents=True, exist_ok=True)
        tmp = so.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(built.__file__, tmp)
        os.replace(tmp, so)
        shutil.rmtree(os.environ.pop("TORCH_EXTENSIONS_DIR"), ignore_errors=True)
        return
    spec = importlib.util.spec_from_file_location(builder.NAME, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    OpBuilder._loaded_ops[builder.NAME] = module  # what builder.load() returns from now on
"""

SCRIPT = r"""
import json, os, sys
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed, torch, torch.nn.functional as F
shm_op_from_cache(sys.argv[3])
from textbooks.model import ModelConfig, PhiForCausalLM
from textbooks.train.module import param_groups
from textbooks.train.strategies import deepspeed as strategy

stage = int(sys.argv[1])
zero = strategy(stage=stage).config["zero_optimization"]
torch.manual_seed(0)
model = PhiForCausalLM(ModelConfig(name="t", vocab_size=512, n_layer=2, d_model=64, n_head=2, d_mlp=256,
                                   rotary_dim=16, max_seq_len=64))
opt = torch.optim.AdamW(param_groups(model, 0.1), lr=2e-3, betas=(0.9, 0.95), eps=1e-7)
cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
       "zero_optimization": zero, "zero_allow_untested_optimizer": True}
engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
x = torch.randint(0, 512, (4, 33), generator=torch.Generator().manual_seed(0))
losses = []
for _ in range(25):
    loss = F.cross_entropy(engine(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    engine.backward(loss)
    engine.step()
    losses.append(loss.item())
print(json.dumps({"stage": engine.zero_optimization_stage(), "optimizer": type(engine.optimizer).__name__,
                  "losses": losses}))
"""


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_trains_the_model(stage):
    r = subprocess.run(
        [sys.executable, "-c", SHM_OP + SCRIPT, str(stage), str(29500 + stage), str(DS_OP_CACHE)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["stage"] == stage and out["optimizer"] == "DeepSpeedZeroOptimizer"
    assert out["losses"][-1] < out["losses"][0] - 1.0  # memorises the batch
