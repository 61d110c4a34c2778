"""``--method denoiser``: the DnCNN, its training in front of a frozen classifier, white-box attacks
through it, the command-line round trip (train, rebuild, eval, transfer from the bare classifier,
resume) and its usage errors."""
import json

import pytest
import torch
import torch.nn.functional as nnf
from torch import nn

from stochnet.attacks import PGD
from stochnet.cli.main import main
from stochnet.defenses import build_method
from stochnet.models import DenoisedClassifier, DnCNN
from stochnet.nn import StocReLUEMA
from stochnet.train import load_checkpoint, model_from_checkpoint, save_checkpoint
from cli_runs import TINY_TRAIN, one_error_line, tiny_checkpoint
from tiny_task import one_thread, tiny_data, tiny_net  # noqa: F401  (one_thread: autouse fixture)

# A DnCNN small enough for a test; the options every training here shares.
SMALL = {"denoiser_blocks": 2, "denoiser_width": 8}
# TINY_TRAIN's budget (without its lr) for a DnCNN of one block of 4 channels, PGD-1.
DENOISER_TRAIN = ["train", "--method", "denoiser", *TINY_TRAIN[3:TINY_TRAIN.index("--lr")], "--denoiser-blocks",
                  "1", "--denoiser-width", "4", "--steps", "1", "--eps", "0.3", "--step-size", "0.3"]


def noisy_denoiser(channels=1):
    """A DnCNN that is not the identity (its last conv is drawn, not zero)."""
    torch.manual_seed(3)
    denoiser = DnCNN(channels, blocks=2, width=8)
    nn.init.normal_(denoiser.layers[-1].weight, std=0.1)
    return denoiser.eval()


def test_dncnn_layers_shape_and_residual():
    model = DnCNN(3, blocks=4, width=16)
    kinds = [type(m) for m in model.layers]
    assert kinds == [nn.Conv2d, nn.ReLU] + [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 4 + [nn.Conv2d]
    assert model.layers[0].in_channels == 3 and model.layers[-1].out_channels == 3
    assert all(m.out_channels == 16 for m in model.layers[:-1] if isinstance(m, nn.Conv2d))
    assert DnCNN(1).blocks == 10 and DnCNN(1).width == 64  # the report's 10 blocks, DnCNN's 64 channels
    x = torch.rand(2, 3, 9, 7)
    assert torch.equal(model(x), x)  # the last conv starts at zero: an untrained DnCNN is the identity
    nn.init.normal_(model.layers[-1].weight)
    residual = model.residual(x)
    assert residual.shape == x.shape and residual.abs().max() > 0.1
    assert torch.allclose(model(x), x - residual)
    for bad, match in (((0,), "in_channels"), ((1, -1), "blocks"), ((1, 2, 1.5), "width")):
        with pytest.raises(ValueError, match=match):
            DnCNN(*bad)


def test_training_lowers_the_denoising_loss_and_keeps_the_classifier_frozen():
    torch.manual_seed(0)
    frozen = tiny_net()
    x, y = tiny_data(64, noise=0.05)
    method = build_method("denoiser", frozen, {**SMALL, "steps": 3, "eps": 0.3, "step_size": 0.12, "lr": 0.01},
                          epochs=1, example_input=x[:2])
    pipeline = method.model
    assert pipeline.classifier is frozen
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    trained = {id(p) for group in method.optimizers["weights"].param_groups for p in group["params"]}
    assert trained == {id(p) for p in pipeline.denoiser.parameters()}
    assert not any(p.requires_grad for p in frozen.parameters())

    torch.manual_seed(1)
    x_adv = PGD(frozen, eps=0.3, alpha=0.12, steps=3)(x, y)  # held-out pairs, made as training makes them

    def denoising_loss():
        with torch.no_grad():
            pipeline.eval()
            return nnf.mse_loss(pipeline(x_adv, denoise_only=True), x).item()

    start = denoising_loss()
    assert start == pytest.approx(nnf.mse_loss(x_adv, x).item())  # the untrained denoiser: identity
    method.on_epoch_start(0)
    for step in range(48):  # enough for the BatchNorm statistics of eval mode to follow
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        result = method.train_step(pipeline, x[batch], y[batch])
        assert set(result) == {"loss", "correct", "count"} and result["count"] == 16
        assert all(m.training for m in pipeline.denoiser.modules())
        assert not any(m.training for m in frozen.modules())
    assert denoising_loss() < 0.5 * start
    for key, value in frozen.state_dict().items():  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in frozen.parameters())


def test_clean_pairs_and_adv_start():
    torch.manual_seed(0)
    x, y = tiny_data(16, noise=0.05)
    method = build_method("denoiser", tiny_net(), {**SMALL, "adv_start": 1, "steps": 1}, epochs=2,
                          example_input=x[:2])
    calls = []
    method.adversary = lambda x_clean, targets: calls.append(targets) or x_clean
    method.on_epoch_start(0)
    method.train_step(method.model, x, y)
    assert not calls and not method.adversarial()  # before adv_start: the clean pairs only
    method.on_epoch_start(1)
    method.train_step(method.model, x, y)
    assert len(calls) == 1 and torch.equal(calls[0], y)


def test_white_box_gradients_flow_through_the_denoiser():
    torch.manual_seed(0)
    bare = tiny_net().eval()
    pipeline = DenoisedClassifier(noisy_denoiser(), bare).double().eval()
    x, y = tiny_data(2, noise=0.05)
    x = x.double().requires_grad_()
    # The input gradient of the pipeline is its true derivative (the denoiser's Jacobian included) ...
    assert torch.autograd.gradcheck(lambda v: pipeline(v), (x,), eps=1e-6, atol=1e-5)
    grad, = torch.autograd.grad(nnf.cross_entropy(pipeline(x), y), x)
    denoised = pipeline.denoiser(x).detach().requires_grad_()
    straight_through, = torch.autograd.grad(nnf.cross_entropy(bare(denoised), y), denoised)
    # ... not the classifier's gradient passed straight through the denoiser (BPDA with the identity).
    assert not torch.allclose(grad, straight_through, rtol=0.05, atol=0)
    # The package's attacks take it as any model and leave no gradients on its parameters.
    pipeline.float()
    torch.manual_seed(1)
    on_pipeline = PGD(pipeline, eps=0.1, alpha=0.05, steps=2, random_start=False)(x.detach().float(), y)
    on_classifier = PGD(bare, eps=0.1, alpha=0.05, steps=2, random_start=False)(x.detach().float(), y)
    assert not torch.equal(on_pipeline, on_classifier)
    assert all(p.grad is None for p in pipeline.parameters())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny classifier and a denoiser trained in front of it through the command line."""
    root = tmp_path_factory.mktemp("denoiser")
    bare = tiny_checkpoint(root / "classifier")
    assert main([*DENOISER_TRAIN, "--classifier", bare, "--out", str(root / "den")]) == 0
    return root, bare, str(root / "den" / "checkpoint.pt")


def test_the_checkpoint_rebuilds_the_pipeline_with_the_classifier_inside(runs, tmp_path):
    root, bare, denoised = runs
    classifier_state, state = load_checkpoint(bare), load_checkpoint(denoised)
    assert state["args"]["classifier"] == bare and state["args"]["classifier_args"]["method"] == "standard"
    for key, value in classifier_state["model"].items():  # frozen through the training loop, bit for bit
        assert torch.equal(state["model"]["classifier." + key], value), key
    # From the checkpoint alone: the classifier's own checkpoint may be gone.
    moved = tmp_path / "den" / "checkpoint.pt"
    save_checkpoint(moved, {k: v for k, v in state.items() if k != "format"})
    rebuilt = model_from_checkpoint(load_checkpoint(moved))
    assert isinstance(rebuilt, DenoisedClassifier) and rebuilt.denoiser.width == 4
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt.classifier(x), model_from_checkpoint(classifier_state)(x))
        assert not torch.equal(rebuilt.denoiser(x), x)  # trained: no longer the identity


def test_a_noisy_classifier_is_rebuilt_with_its_noise_and_stays_frozen(runs, tmp_path):
    root, bare, _ = runs
    student = tmp_path / "anis2"
    assert main(["train", "--method", "anis2", *TINY_TRAIN[3:], "--teacher", bare, "--steps", "1", "--eps", "0.1",
                 "--step-size", "0.1", "--gamma-max", "0.5", "--out", str(student)]) == 0
    assert main([*DENOISER_TRAIN, "--classifier", str(student / "checkpoint.pt"), "--out", str(tmp_path / "den")]) == 0
    student_state, state = load_checkpoint(student / "checkpoint.pt"), load_checkpoint(tmp_path / "den" / "checkpoint.pt")
    for key, value in student_state["model"].items():  # running_sigma included: no train-mode pass moved it
        assert torch.equal(state["model"]["classifier." + key], value), key
    rebuilt = model_from_checkpoint(state)
    noise = [m for m in rebuilt.classifier.modules() if isinstance(m, StocReLUEMA)]
    assert noise and all(m.gamma == 0.5 for m in noise)  # the student's scheduled gamma, not gamma_init


def test_eval_attacks_through_the_denoiser_and_transfers_from_the_bare_classifier(runs, tmp_path, capsys):
    root, bare, denoised = runs
    assert main(["eval", "--checkpoint", denoised, "--attacks", "pgd,transfer-pgd", "--source-classifier",
                 "--limit", "8", "--steps", "2", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "crafted on the row's bare classifier" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval.json").read_text())
    rows = {row["attack"]: row for row in report["rows"]}
    assert rows["pgd"]["method"] == "denoiser" and rows["pgd"]["source_checkpoint"] is None
    assert rows["transfer-pgd"]["source_checkpoint"] == denoised
    assert rows["transfer-pgd"]["source_label"] == "den classifier (standard mnist_cnn)"
    assert report["settings"]["source_classifier"] is True
    assert all(row["num_samples"] == 8 and 0 <= row["adversarial_accuracy"] <= 1 for row in rows.values())


def test_resume_needs_no_classifier_file(runs, tmp_path, capsys):
    root, bare, _ = runs
    out = tmp_path / "den"
    assert main([*DENOISER_TRAIN, "--classifier", bare, "--out", str(out)]) == 0
    first = load_checkpoint(out / "checkpoint.pt")
    epochs = DENOISER_TRAIN.index("--epochs") + 1
    resumed = [*DENOISER_TRAIN[:epochs], "2", *DENOISER_TRAIN[epochs + 1:], "--out", str(out), "--resume"]
    one_error_line(capsys, [*resumed, "--classifier", str(tmp_path / "other.pt")], "changed: classifier")
    assert main(resumed) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["args"]["classifier"] == bare
    assert state["args"]["classifier_args"] == first["args"]["classifier_args"]
    assert any(not torch.equal(state["model"][k], v) for k, v in first["model"].items() if k.startswith("denoiser."))
    for key, value in first["model"].items():
        if key.startswith("classifier."):
            assert torch.equal(state["model"][key], value), key


def test_usage_errors(runs, tmp_path, capsys):
    root, bare, denoised = runs
    out = str(tmp_path / "run")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    state = load_checkpoint(bare)
    state["args"]["model"] = "basicnet"
    save_checkpoint(tmp_path / "basicnet.pt", {k: v for k, v in state.items() if k != "format"})
    for argv, match in [
        ([*DENOISER_TRAIN], "--method denoiser needs --classifier CKPT"),
        ([*DENOISER_TRAIN, "--classifier", str(tmp_path / "none.pt")], "--classifier: checkpoint"),
        ([*DENOISER_TRAIN, "--classifier", str(tmp_path / "junk.pt")], "--classifier: cannot read checkpoint"),
        ([*DENOISER_TRAIN, "--classifier", str(tmp_path / "basicnet.pt")], "does not match this run's model"),
        ([*DENOISER_TRAIN, "--classifier", denoised], "pass the checkpoint of a classifier"),
        ([*DENOISER_TRAIN, "--classifier", bare, "--init", bare], "--init would be ignored"),
        ([*DENOISER_TRAIN, "--classifier", bare, "--teacher", bare], "--teacher would be ignored"),
        ([*TINY_TRAIN, "--classifier", bare], "--classifier would be ignored (it is for --method denoiser)"),
    ]:
        one_error_line(capsys, [*argv, "--out", out], match)
        assert not (tmp_path / "run" / "checkpoint.pt").exists()
    evaluate = ["eval", "--limit", "2", "--device", "cpu", "--out", str(tmp_path / "eval")]
    for argv, match in [
        (["--checkpoint", bare, "--attacks", "transfer-pgd", "--source-classifier"], "is a standard run"),
        (["--checkpoint", denoised, "--attacks", "pgd", "--source-classifier"], "transfer attacks only"),
        (["--checkpoint", denoised, "--attacks", "transfer-pgd", "--source-classifier", "--source-checkpoint",
          bare], "pass one"),
        (["--checkpoint", denoised, "--attacks", "transfer-pgd"], "or --source-classifier"),
    ]:
        one_error_line(capsys, [*evaluate, *argv], match)
