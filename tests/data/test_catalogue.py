"""The task catalogue: metadata for Med-VTAB, FGVC, VTAB-1k and the bundled sets (no data is touched)."""
import json
import re
from collections import Counter

import pytest

from medvtab.data.catalogue import (RAW_LAYOUTS, TASK_TYPES, TASKS, TaskInfo, get_task, list_tasks,
                                   overlapping_sources, task_dict)
from medvtab.errors import MedvtabError

BUNDLED = {"retinamnist", "pneumoniamnist", "breastmnist", "pbc", "kermany-cxr"}


def test_benchmark_sizes():
    counts = Counter(t.benchmark for t in TASKS.values())
    assert counts == {"med-vtab": 23, "fgvc": 5, "vtab-1k": 19, "bundled": 5}
    assert {t.name for t in list_tasks("bundled")} == BUNDLED


def test_med_vtab_modalities_follow_appendix_a():
    per = Counter(t.modality for t in list_tasks("med-vtab"))
    assert per == {"colour": 9, "x-ray": 7, "oct/ct/mri": 7}
    assert len(list_tasks("med-vtab", "colour")) == 9
    vtab = Counter(t.modality for t in list_tasks("vtab-1k"))
    assert vtab == {"natural": 7, "specialized": 4, "structured": 8}


def test_every_entry_is_complete():
    slug = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
    for name, t in TASKS.items():
        assert isinstance(t, TaskInfo) and t.name == name and slug.match(name), name
        for field in ("title", "download", "licence", "citation", "modality", "organ", "source_group"):
            assert isinstance(getattr(t, field), str) and getattr(t, field).strip(), (name, field)
        assert t.download.startswith(("http://", "https://")), name
        assert t.raw_layout in RAW_LAYOUTS and t.task_type in TASK_TYPES, name
        assert isinstance(t.patient_ids, bool), name
        assert t.classes is None or (isinstance(t.classes, int) and t.classes > 1) or \
            (isinstance(t.classes, tuple) and len(set(t.classes)) == len(t.classes) > 1), name
        assert t.images is None or t.images > 0, name
    assert len(TASKS) == len({t.name for t in TASKS.values()})


def test_paper_facts():
    assert get_task("chexpert").task_type == "multi-label"
    assert get_task("vindr-cxr").task_type == "multi-label"
    for name in ("rsna-bone-age", "aptos", "eyepacs"):
        assert get_task(name).task_type == "ordinal", name
    assert get_task("hyperkvasir").images == 110_079 and get_task("hyperkvasir").num_classes == 23
    assert get_task("amlc").num_classes == 15 and get_task("mllbone").num_classes == 21
    assert get_task("aptos").num_classes == 5 and get_task("heidelberg-oct").num_classes == 4
    assert get_task("ricord").images == 120 and get_task("cc-ccii").images == 617_775
    assert get_task("rsna-bone-age").classes == 228
    assert all(t.images is None for t in list_tasks("vtab-1k") + list_tasks("fgvc"))
    assert all(t.images for t in list_tasks("med-vtab") + list_tasks("bundled"))


def test_bundled_facts_match_the_shared_readme():
    k = get_task("kermany-cxr")
    assert k.patient_ids and k.raw_layout == "npz" and k.images == 5840
    assert get_task("pbc").class_names[:3] == ["basophil", "eosinophil", "erythroblast"]
    assert {t.licence for t in list_tasks("bundled")} == {"CC BY 4.0"}
    assert not get_task("pneumoniamnist").patient_ids


def test_get_task_normalises_and_suggests():
    assert get_task("Kermany_CXR") is TASKS["kermany-cxr"]
    assert get_task("dtd") is TASKS["vtab-dtd"]
    with pytest.raises(MedvtabError, match="pneumoniamnist"):
        get_task("pneumonimnist")
    with pytest.raises(MedvtabError, match="chexpert"):
        get_task("chexpret")


def test_list_tasks_filters_and_rejects_unknowns():
    xray = {t.name for t in list_tasks(modality="x-ray")}
    assert {"chexpert", "pneumoniamnist", "kermany-cxr"} <= xray and "aptos" not in xray
    assert list(TASKS.values()) == list_tasks()
    with pytest.raises(MedvtabError, match="benchmark"):
        list_tasks("imagenet")
    with pytest.raises(MedvtabError, match="modality"):
        list_tasks("fgvc", "x-ray")


def test_task_dict_is_json_ready():
    row = task_dict(get_task("chexpert"))
    back = json.loads(json.dumps(row))
    assert back["classes"][0] == "No Finding" and back["num_classes"] == 14
    assert set(TaskInfo.__dataclass_fields__) <= set(back)
    assert task_dict(get_task("ricord"))["num_classes"] is None
    json.dumps([task_dict(t) for t in list_tasks()])


def test_overlapping_sources():
    assert overlapping_sources("pneumoniamnist", ("kermany-cxr",)) == ["kermany-cxr"]
    assert overlapping_sources("kermany-cxr", ("pneumoniamnist", "chexpert")) == ["pneumoniamnist"]
    assert overlapping_sources("pneumoniamnist", ("chexpert",)) == []
    assert overlapping_sources("aptos", ("eyepacs",)) == []
    assert overlapping_sources("eyepacs", ("vtab-retinopathy", "aptos")) == ["vtab-retinopathy"]
    assert overlapping_sources("vtab-flowers102", ("oxford-flowers102",)) == ["oxford-flowers102"]
    assert overlapping_sources("heidelberg-oct", ("kermany-cxr",)) == []
    assert overlapping_sources("chexpert", ()) == []
    with pytest.raises(MedvtabError):
        overlapping_sources("pneumoniamnist", ("no-such-task",))
