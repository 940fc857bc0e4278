"""Two gloo processes on CPU (detectron2.engine.launch): training steps, identical queues and centres,
Shuffle-BN shuffle/unshuffle restores the order."""
import os

import torch

from detectron2.engine import launch
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm

WORLD = 2


def _worker(repo_root, out_dir):
    os.chdir(repo_root)
    torch.set_num_threads(1)
    from detectron2.modeling import build_model

    from plrc_d2.modeling.distributed import batch_shuffle, batch_unshuffle, concat_all_gather, shuffle_permutation
    from plrc_meta_helpers import inputs, tiny_cfg

    rank = comm.get_rank()
    # shuffle / unshuffle of a tagged local batch
    x = torch.arange(3 * 2).view(3, 2).float() + 100 * rank
    perm = shuffle_permutation(3 * WORLD, seed=7, iteration=11, device="cpu")
    shuffled, idx = batch_shuffle(x, perm)
    restored = batch_unshuffle(shuffled * 1, idx)

    cfg = tiny_cfg("SOLVER.IMS_PER_BATCH", 4, "MODEL.PLRC.QUEUE_SIZE", 8)
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's state
    model = create_ddp_model(build_model(cfg).train(), broadcast_buffers=False, device_ids=None)  # CPU
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for it in range(3):
        model.module.update_schedule(iteration=it, teacher_temperature=0.05, momentum=0.9)
        losses = model(inputs(2, seed=10 * it + rank))  # each rank its own half of the global batch of 4
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    m = model.module
    torch.save({"x": x, "shuffled": shuffled, "restored": restored, "perm": perm,
                "gathered_perm": concat_all_gather(perm[None]),
                "queue": m.queue.queue.clone(), "ptr": m.queue.ptr.clone(), "center": m.center.clone(),
                "momentum_params": [p.clone() for p in m.momentum_encoder.parameters()],
                "online_params": [p.clone() for p in m.encoder.parameters()],
                "losses": {k: v.item() for k, v in losses.items()}},
               os.path.join(out_dir, f"rank{rank}.pth"))


def test_two_process_training(tmp_path, repo_root):
    launch(_worker, WORLD, dist_url="auto", args=(repo_root, str(tmp_path)))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pth") for r in range(WORLD))
    # Shuffle-BN helpers: same permutation everywhere, each rank gets its slice, unshuffle restores
    assert torch.equal(r0["gathered_perm"][0], r0["gathered_perm"][1])
    both = torch.cat([r0["x"], r1["x"]])
    assert torch.equal(torch.cat([r0["shuffled"], r1["shuffled"]]), both[r0["perm"]])
    assert not torch.equal(torch.cat([r0["shuffled"], r1["shuffled"]]), both)
    for r in (r0, r1):
        assert torch.equal(r["restored"], r["x"])
    # training: finite losses, queue/pointer/centre and both encoders identical across ranks
    assert all(torch.isfinite(torch.tensor(v)) for r in (r0, r1) for v in r["losses"].values())
    assert torch.equal(r0["queue"], r1["queue"]) and int(r0["ptr"]) == int(r1["ptr"]) == (3 * 4) % 8
    assert torch.allclose(r0["center"], r1["center"]) and r0["center"].abs().sum() > 0
    for key in ("online_params", "momentum_params"):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(r0[key], r1[key]))
