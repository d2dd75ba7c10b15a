import pandas as pd
import pytest
import torch
from torch import nn

from cl_bench.budget.flops import FlopCounter
from cl_bench.methods.latent_replay import (
    chunk_sizes,
    classify_chunks,
    distill,
    temporal_level,
)
from cl_bench.methods.plr import plr_frequencies
from cl_bench.models.cvae import LevelVAE
from cl_bench.models.levels import LevelView
from cl_bench.models.mlp import MLP
from conftest import compose_config, interrupt_and_resume


def _replay_cost_ratio(input_shape, hidden, n_classes, rule, n=2**22):
    """Classifier replay forward FLOPs of PLR over internal replay (everything at a_0),
    counted by the hooks on shape-only (meta) tensors, with the method's own partition."""
    with torch.device("meta"):
        view = LevelView(MLP(input_shape, n_classes, hidden=hidden))
    counter = FlopCounter().attach(view.model)
    sizes = chunk_sizes(plr_frequencies(rule, view.param_counts()), n)
    with torch.device("meta"), torch.no_grad():
        with counter.component("plr"):
            classify_chunks(view, [(k, torch.empty(s, view.dims[k])) for k, s in enumerate(sizes)])
        with counter.component("ir"):
            classify_chunks(view, [(0, torch.empty(n, view.dims[0]))])
    return counter.components["plr"] / counter.components["ir"]


def _derived(params, rule):
    """The notes' closed forms from per-layer parameter counts: cost of level k is
    C_k = sum_{j>=k} w_j; uniform -> mean_k C_k / C_0; cumulative_weights -> L / sum_k r_k."""
    cost = [sum(params[k:]) for k in range(len(params))]
    if rule == "uniform":
        return sum(cost) / len(cost) / cost[0]
    return len(params) / sum(cost[0] / c for c in cost)


@pytest.mark.parametrize(("shape", "hidden", "classes", "rule", "table", "params"), [
    ((1, 28, 28), (400, 400), 10, "uniform", 0.451, [314000, 160400, 4010]),
    ((1, 28, 28), (400, 400), 10, "cumulative_weights", 0.024, [314000, 160400, 4010]),
    ((1024,), (2000, 2000), 100, "uniform", 0.568, [2050000, 4002000, 200100]),
    ((1024,), (2000, 2000), 100, "cumulative_weights", 0.089, [2050000, 4002000, 200100]),
])
def test_plr_classifier_replay_cost_relative_to_internal_replay(
        shape, hidden, classes, rule, table, params):
    ratio = _replay_cost_ratio(shape, hidden, classes, rule)
    # the hooks count weights only (2*in*out), the notes count weights + biases
    assert ratio == pytest.approx(_derived(params, rule), rel=0.005)
    # the notes print 3 decimals: 0.451 / 0.024 / 0.568 / 0.089
    assert round(ratio, 3) == table


def test_frequency_rules_and_partition():
    params = [314000, 160400, 4010]
    assert plr_frequencies("uniform", params) == pytest.approx([1 / 3] * 3)
    cum = plr_frequencies("cumulative_weights", params)
    assert cum == pytest.approx([0.0081, 0.0236, 0.9683], abs=1e-4)
    assert plr_frequencies("total_weights", params) == pytest.approx([.0123, .0241, .9636],
                                                                    abs=1e-4)
    assert chunk_sizes(cum, 128) == [1, 3, 124]
    assert chunk_sizes([0.5, 0.25, 0.25], 7) == [3, 2, 2]  # 3.5, 1.75, 1.75
    assert chunk_sizes([0.5, 0.25, 0.25], 7, "ceil") == [4, 2, 1]  # 4, then ceil(1.75), rest
    assert chunk_sizes([0.6, 0.3, 0.1], 3, "ceil") == [2, 1, 0]  # the ceils run out of samples
    with pytest.raises(ValueError, match="method.split"):
        chunk_sizes(cum, 128, "floor")
    with pytest.raises(ValueError, match="method.frequencies"):
        plr_frequencies("explicit", params, [0.5, 0.5])
    with pytest.raises(ValueError, match="method.rule"):
        plr_frequencies("bottom_heavy", params)


def _mlp_frequencies(shape, hidden, classes, rule):
    with torch.device("meta"):
        view = LevelView(MLP(shape, classes, hidden=hidden))
    return view.param_counts(), plr_frequencies(rule, view.param_counts())


def test_ceil_split_is_the_authors_2_4_122_on_the_split_mnist_network():
    params, cum = _mlp_frequencies((1, 28, 28), (400, 400), 10, "cumulative_weights")
    assert params == [314000, 160400, 4010]
    # f_k * 128 = 1.04, 3.02, 123.94: rounded up at a_0 and a_1, the rest at a_2
    assert chunk_sizes(cum, 128, "ceil") == [2, 4, 122]
    assert chunk_sizes(cum, 128, "largest_remainder") == [1, 3, 124]


def test_ceil_split_by_hand_on_the_four_level_cifar_network():
    params, cum = _mlp_frequencies((1024,), (1000, 1000, 1000), 100, "cumulative_weights")
    # weights + biases of 1024-1000, 1000-1000, 1000-1000, 1000-100
    assert params == [1025000, 1001000, 1001000, 100100]
    # cost above level k: C = 3127100, 2102100, 1101100, 100100; f_k = (C_0 / C_k) / sum
    c = [3127100, 2102100, 1101100, 100100]
    f = [c[0] / ck / sum(c[0] / cj for cj in c) for ck in c]
    assert cum == pytest.approx(f)
    # f_k * 256 = 7.0008, 10.414, 19.882, 218.70 -> ceil 8, 11, 20, the rest 217
    assert [round(fk * 256, 3) for fk in f] == [7.001, 10.414, 19.882, 218.703]
    assert chunk_sizes(cum, 256, "ceil") == [8, 11, 20, 217]
    assert chunk_sizes(cum, 256, "largest_remainder") == [7, 10, 20, 219]


def test_summary_effective_frequencies_are_the_replayed_counts(run_job, monkeypatch):
    from cl_bench.methods import latent_replay

    seen = []
    classify = latent_replay.classify_chunks

    def spy(view, chunks):
        if view.model.training:  # the classifier's replay pass, not the teacher's
            seen.append([(k, a.shape[0]) for k, a in chunks])
        return classify(view, chunks)

    monkeypatch.setattr(latent_replay, "classify_chunks", spy)
    plr, _ = run_job("method=plr", "method.rule=cumulative_weights", *TINY)
    n_levels = len(plr["replay_frequencies_nominal"])
    counts = [sum(n for step in seen for k, n in step if k == lvl) for lvl in range(n_levels)]
    assert plr["replay_steps"] == len(seen) == 5  # task 1's steps
    assert plr["replay_samples_per_level"] == counts
    assert plr["replay_samples_per_step"] == [c / 5 for c in counts]
    assert plr["replay_frequencies_effective"] == [c / sum(counts) for c in counts]
    # the executed split is the ceil split of the nominal frequencies
    assert [c // 5 for c in counts] == chunk_sizes(plr["replay_frequencies_nominal"], 32, "ceil")
    assert plr["method.split"] == "ceil"


def test_temporal_partition_replays_level_k_on_f_k_of_the_steps():
    f = [0.1, 0.3, 0.6]
    credits = torch.zeros(3, dtype=torch.float64)
    levels = [temporal_level(credits, f) for _ in range(1000)]
    assert [levels.count(k) for k in range(3)] == [100, 300, 600]
    # layer h_2 (needs level < 2) gets replay on F_2 = 0.4 of every 10 consecutive steps
    assert all(sum(k < 2 for k in levels[i:i + 10]) == 4 for i in range(0, 1000, 10))


def test_levels_and_injection_agree_with_the_model():
    model = MLP((1, 4, 4), 3, hidden=(5, 6))
    view = LevelView(model)
    x = torch.randn(7, 1, 4, 4)
    acts, logits = view.levels(x)
    assert [a.shape[1] for a in acts] == view.dims == [16, 5, 6]
    assert view.param_counts() == [85, 36, 21]
    for k, a in enumerate(acts):
        assert torch.allclose(view.forward_from(a, k), model(x), atol=1e-6)
    assert torch.allclose(logits, model(x), atol=1e-6)


def test_decoding_stops_at_the_injection_level():
    vae = LevelVAE([16, 5, 6], n_classes=3, z_dim=4)
    counter = FlopCounter().attach(vae)
    z = torch.randn(10, 4)
    per_level = []
    for k in (2, 1, 0):
        counter.train_flops = 0
        with torch.no_grad():
            out = vae.decode(z, down_to=k)
        assert out[k].shape == (10, [16, 5, 6][k]) and all(o is None for o in out[:k])
        per_level.append(counter.train_flops)
    # fromZ 4->6, then 6->5, then 5->16
    assert per_level == [2 * 10 * 4 * 6, 2 * 10 * (24 + 30), 2 * 10 * (24 + 30 + 80)]


def test_extra_generator_layer_is_the_authors_vae_shape():
    plain = LevelVAE([16, 5, 6], n_classes=3, z_dim=4, gate_prop=0.5)
    vae = LevelVAE([16, 5, 6], n_classes=3, z_dim=4, gate_prop=0.5, extra_layer=True)
    widths = [(m.in_features, m.out_features) for m in vae.encoder if isinstance(m, nn.Linear)]
    assert widths == [(16, 5), (5, 6), (6, 6)]  # encoder 16-5-6-6, as theirs 784-400-400-400
    # the gates of the levels are the ones without the extra layer (drawn first)
    assert all(torch.equal(getattr(vae, f"gate{i}"), getattr(plain, f"gate{i}")) for i in (0, 1))
    counter = FlopCounter().attach(vae)
    with torch.no_grad():
        out = vae.decode(torch.randn(10, 4), torch.zeros(10, dtype=torch.long), down_to=2)
    assert out[2].shape == (10, 6)
    assert counter.train_flops == 2 * 10 * (4 * 6 + 6 * 6)  # fromZ z -> h, then h -> a_2


def test_component_tags_partition_train_flops():
    model = MLP((1, 2, 2), 2, hidden=(3,))
    counter = FlopCounter().attach(model)
    with torch.no_grad():
        with counter.component("a"):
            model(torch.randn(5, 1, 2, 2))
            with counter.component("b"):
                model(torch.randn(1, 1, 2, 2))
        model(torch.randn(1, 1, 2, 2))  # untagged: train total only
    per_sample = 2 * (4 * 3 + 3 * 2)
    assert counter.components == {"a": 5 * per_sample, "b": per_sample}
    assert counter.train_flops == 7 * per_sample


def test_distillation_puts_zero_target_mass_on_new_classes():
    logits = torch.tensor([[2.0, 0.0, 5.0]])
    loss = distill(logits, torch.tensor([[1.0, 1.0]]), temperature=1.0)
    log_q = torch.log_softmax(logits, 1)
    assert loss.item() == pytest.approx(-(0.5 * log_q[0, 0] + 0.5 * log_q[0, 1]).item())


FAST = ["optimizer=adam", "budget.epochs=null", "budget.iters=200", "budget.batch_size=32",
        "eval.every=0", "model.hidden=[100,100]", "method.replay_batch_size=32"]
TINY = ["benchmark.n_tasks=2", "budget.iters=5", *FAST[:1], *FAST[3:]]


@pytest.mark.slow
def test_generative_replay_beats_finetune_on_digits(run_job):
    fine, _ = run_job("method=finetune", *FAST[:-1])
    gr, _ = run_job("method=generative_replay", *FAST)
    assert gr["acc_class_il"] > fine["acc_class_il"] + 0.5


@pytest.mark.slow
def test_gr_mnist_within_2_points_of_the_published_dgr_distill(run_job):
    """van de Ven & Tolias (2019) report 91.79 % class-IL for DGR + distillation on this
    protocol (~7 min on 2 CPU cores)."""
    gr, run_dir = run_job("experiment=gr_mnist", "eval.every=0")
    assert gr["acc_class_il"] >= 0.8979 and gr["acc_task_il"] >= 0.99
    assert (run_dir / "samples_task4.png").is_file()


def test_plr_replays_cheaper_than_generative_replay_and_logs_components(run_job):
    gr, gr_dir = run_job("method=generative_replay", *TINY)
    # the generator as generative replay's (no extra layer), so its training costs the same
    plr, _ = run_job("method=plr", "method.rule=cumulative_weights",
                     "method.generator_extra_layer=false", *TINY)
    full, _ = run_job("method=plr", "method.rule=cumulative_weights",
                      "method.generator_extra_layer=false", "method.decode_to_level=false",
                      *TINY)
    train = pd.read_csv(gr_dir / "train.csv")
    parts = ["flops_generator_train", "flops_replay", "flops_current", "flops_teacher"]
    assert (train[parts].sum(axis=1) == train.flops_cumulative).all()
    assert all(train[c].is_monotonic_increasing and gr[c] == train[c].iloc[-1] for c in parts)
    assert [p.name for p in sorted(gr_dir.glob("samples_task*.png"))] == [
        "samples_task0.png", "samples_task1.png"]
    assert plr["flops_current"] == gr["flops_current"]
    assert plr["flops_generator_train"] == gr["flops_generator_train"]
    assert plr["flops_replay"] < 0.6 * gr["flops_replay"]
    assert plr["flops_replay"] < full["flops_replay"] < gr["flops_replay"]
    assert plr["flops_teacher"] < gr["flops_teacher"]


def test_internal_replay_above_level_0_freezes_the_layers_below(run_job, monkeypatch):
    from cl_bench.methods.internal_replay import InternalReplay

    seen = {}
    after = InternalReplay.after_task

    def spy(self, task):
        after(self, task)
        seen[task.id] = [p.detach().clone() for p in self.view.layers[0].parameters()]

    monkeypatch.setattr(InternalReplay, "after_task", spy)
    ir, _ = run_job("method=internal_replay", "method.replay_level=1", *TINY)
    gr, _ = run_job("method=generative_replay", *TINY)
    # the first hidden layer trained on task 0 only: task 1 left it exactly as it was
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1], strict=True))
    # replay enters above that layer, so its replay pass costs less than input-level replay
    assert 0 < ir["flops_replay"] < gr["flops_replay"]
    assert ir["flops_current"] < gr["flops_current"]  # no weight gradient for the frozen layer


@pytest.mark.parametrize("method", [["method=generative_replay"],
                                    ["method=plr", "method.rule=uniform"]])
def test_interrupted_generative_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch,
                                                                        method):
    from cl_bench.methods.latent_replay import LatentReplay

    summary, ref = interrupt_and_resume(tmp_path, monkeypatch, LatentReplay, [*method, *TINY],
                                        stop_at=8)  # task 1's third step
    for col in ["flops_generator_train", "flops_replay", "flops_current", "flops_teacher",
                "replay_samples_per_level", "replay_steps"]:
        assert summary[col] == ref[col], col


def _parts(tmp_path, *overrides):
    from cl_bench.experiment import build_parts
    from conftest import data_root

    cfg = compose_config([f"data.root={data_root()}", *overrides])
    parts = build_parts(cfg, tmp_path)
    parts.method._build()
    return parts


def test_pixel_generator_maps_sigmoid_pixels_into_the_classifier_input(tmp_path):
    parts = _parts(tmp_path, "method=generative_replay", "benchmark=split_mnist",
                   "model.hidden=[20,20]")
    vae = parts.method.generator
    assert vae.recon_loss == "bce" and vae.recon_levels == [0] and not vae.per_class_prior
    x = parts.stream.tasks[0].train_x[:16]
    a0 = parts.method.preprocess(x).flatten(1)
    # the BCE targets are the raw pixels in [0, 1]
    assert torch.allclose(vae.to_pixels(a0), x.flatten(1).float() / 255, atol=1e-5)
    out = vae.decode(torch.randn(16, vae.z_dim))
    assert out[0].shape == a0.shape
    # decoded images lie in the normalised range of [0, 1] pixels
    lo, hi = vae.pixel_shift, vae.pixel_scale + vae.pixel_shift
    assert ((out[0] >= lo - 1e-5) & (out[0] <= hi + 1e-5)).all()


def test_feature_generator_uses_mse_and_internal_replay_learns_its_level_only(tmp_path):
    parts = _parts(tmp_path, "method=internal_replay", "method.replay_level=1",
                   "benchmark=split_mnist", "model.hidden=[20,20]")
    vae = parts.method.generator
    assert vae.recon_levels == [1] and vae.per_class_prior and vae.gate_prop == 0.8
    plr = _parts(tmp_path, "method=plr", "benchmark=split_mnist",
                 "model.hidden=[20,20]").method.generator
    assert plr.recon_levels == [0, 1, 2]
    with pytest.raises(ValueError, match="method.recon_loss"):
        LevelVAE([16, 5], 3, recon_loss="bce")  # no pixel mapping: level 0 is not an image


def test_generator_loss_is_half_mse_of_its_levels_plus_kl_over_the_divisor():
    torch.manual_seed(0)
    vae = LevelVAE([6, 5, 4], n_classes=2, z_dim=3, per_class_prior=False,
                   recon_levels=[1], kl_divisor=10.0)
    levels = [torch.randn(8, 6), torch.rand(8, 5), torch.rand(8, 4)]
    y = torch.zeros(8, dtype=torch.long)
    # levels the generator does not learn do not enter its loss
    other = [levels[0], levels[1], torch.full((8, 4), 100.0)]
    torch.manual_seed(1)
    loss = vae.loss(levels, y)
    torch.manual_seed(1)
    assert vae.loss(other, y).item() == pytest.approx(loss.item())
    # by hand, with the same reparameterisation noise
    torch.manual_seed(1)
    mu, logvar = vae.to_z(vae.encoder(levels[0])).chunk(2, dim=1)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    rec = vae.decode_raw(z, down_to=1)[1]
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
    expected = 0.5 * ((rec - levels[1]) ** 2).mean() + kl / 10.0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
