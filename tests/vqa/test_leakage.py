"""No test image of VQA-RAD or SLAKE reaches a training stage of the pipeline's protocol, by decoded-pixel digest or by
image id (MedPix holds VQA-RAD images resized, under the same synpic id). The one exception, stated in every run:
VQA-RAD's fine-tuning on its own train split, whose official split is by question."""
import pytest

from medvtab.errors import MedvtabError
from medvtab.vqa.data import image_file_digest, load_captions, load_vqa, set_folder
from medvtab.vqa.pipeline import PipelineConfig, held_out_of, plan
from medvtab.vqa.train import StageOptions, load_stage_items, sources

pytestmark = pytest.mark.usefixtures("shared_vqa_data")


def _images(items) -> dict[str, set]:
    return {"digest": {image_file_digest(i.image) for i in items}, "id": {i.image_id for i in items}}


def _shared(a: dict, b: dict) -> int:
    return max(len(a["digest"] & b["digest"]), len(a["id"] & b["id"]))


def test_no_test_image_reaches_a_training_stage():
    cfg = PipelineConfig()
    held = held_out_of(cfg)
    assert held == ("vqa-rad:test", "slake:test")
    test = {ref: _images(load_vqa(ref.split(":")[0], "test")) for ref in held}
    steps = plan(cfg, on_note=lambda _: None)
    assert [s["name"] for s in steps] == ["caption", "vqa", "finetune-vqa-rad", "finetune-slake"]
    for step in steps:
        items, _ = load_stage_items(step["stage"], step["data"], step["split"], cfg.options, None, held,
                                    on_note=lambda _: None)
        seen = _images(items)
        for ref in held:
            expected = 202 if (step["name"], ref) == ("finetune-vqa-rad", "vqa-rad:test") else 0
            assert _shared(seen, test[ref]) == expected, (step["name"], ref)


def test_without_the_guard_the_pretraining_stages_would_see_test_images():
    """What the guard removes (so the test above can fail): VQA-RAD test images in the general-VQA substitute and
    in MedPix; the two target sets share no image, and SLAKE's splits none either."""
    rad_test, slake_test = _images(load_vqa("vqa-rad", "test")), _images(load_vqa("slake", "test"))
    general = [i for name, split in sources(plan(PipelineConfig(), lambda _: None)[1]["data"], "train")
               for i in load_vqa(name, split)]
    assert _shared(_images(general), rad_test) == 202 and _shared(_images(general), slake_test) == 0
    medpix = _images(load_captions("medpix", "train"))
    assert _shared(medpix, rad_test) == 9 and len(medpix["digest"] & rad_test["digest"]) == 0  # resized copies
    assert _shared(_images(load_vqa("slake", "train")), rad_test) == 0


def test_a_held_out_set_absent_from_the_data_root_is_named_not_fatal(tmp_path):
    (tmp_path / "vqa_rad").symlink_to(set_folder("vqa-rad"))  # a data root with VQA-RAD only
    notes = []
    items, dropped = load_stage_items("vqa", "vqa-rad", "train", StageOptions(), tmp_path, on_note=notes.append)
    assert (len(items), dropped) == (734, 1063)  # VQA-RAD's test images still held out
    assert notes[0] == "vqa: held-out slake:test not under the MedVQA data root: its images are not checked"
    with pytest.raises(MedvtabError, match="unknown set 'nowhere'"):  # a misspelt held-out set is an error
        load_stage_items("vqa", "vqa-rad", "train", StageOptions(), tmp_path, held_out=("nowhere:test",))
