"""The real sets bundled with medvtab or shared beside it (MedMNIST v2 files, PBC, Kermany with patient ids)."""
from medvtab.data.catalogue.taskinfo import TaskInfo

BUNDLED_SETS: tuple[TaskInfo, ...] = (
    # ------------------------------------------------------------------ bundled / shared real sets
    TaskInfo(
        name="retinamnist", title="RetinaMNIST (MedMNIST v2)", benchmark="bundled", modality="colour fundus",
        organ="eye", task_type="ordinal", classes=("0", "1", "2", "3", "4"), images=1_600,
        download="https://medmnist.com/", licence="CC BY 4.0",
        citation="Yang et al., 2023, Scientific Data (MedMNIST v2); source: DeepDRiD (Liu et al., 2022, Patterns)",
        raw_layout="npz", patient_ids=False, source_group="deepdrid",
        notes="28x28x3, 1080/120/400 train/val/test; labels are DR grades 0-4 (like APTOS / EyePACS, "
              "but different images)."),
    TaskInfo(
        name="pneumoniamnist", title="PneumoniaMNIST (MedMNIST v2)", benchmark="bundled", modality="x-ray",
        organ="chest", task_type="multi-class", classes=("normal", "pneumonia"), images=5_856,
        download="https://medmnist.com/", licence="CC BY 4.0",
        citation="Yang et al., 2023, Scientific Data (MedMNIST v2); source: Kermany et al., 2018, Cell",
        raw_layout="npz", patient_ids=False, source_group="kermany2018",
        notes="Paediatric chest X-ray, 28x28 grey, 4708/524/624 train/val/test. Built from the same Kermany "
              "images as kermany-cxr: never pre-train on one and evaluate on the other."),
    TaskInfo(
        name="breastmnist", title="BreastMNIST (MedMNIST v2)", benchmark="bundled", modality="ultrasound",
        organ="breast", task_type="multi-class", classes=("malignant", "normal, benign"), images=780,
        download="https://medmnist.com/", licence="CC BY 4.0",
        citation="Yang et al., 2023, Scientific Data (MedMNIST v2); source: Al-Dhabyani et al., 2020, "
                 "Data in Brief (BUSI)",
        raw_layout="npz", patient_ids=False, source_group="busi",
        notes="Breast ultrasound, 28x28 grey, 546/78/156 train/val/test; 0 = malignant, 1 = normal or benign."),
    TaskInfo(
        name="pbc", title="PBC peripheral blood cells", benchmark="bundled", modality="microscopy",
        organ="cell", task_type="multi-class",
        classes=("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                 "platelet"),
        images=17_092, download="https://data.mendeley.com/datasets/snkd93bnjr/1", licence="CC BY 4.0",
        citation="Acevedo et al., 2020, Data in Brief", raw_layout="npz", patient_ids=False,
        source_group="pbc-acevedo2020",
        notes="Peripheral blood smear single cells (the source of BloodMNIST); pbc_28: 11965/1708/3419 "
              "stratified 70/10/20 split, pbc_64: balanced 1400/200/400 subset. ig = immature granulocytes."),
    TaskInfo(
        name="kermany-cxr", title="Kermany paediatric chest X-ray (with patient ids)", benchmark="bundled",
        modality="x-ray", organ="chest", task_type="multi-class", classes=("normal", "pneumonia"), images=5_840,
        download="https://data.mendeley.com/datasets/rscbjbr9sj/2", licence="CC BY 4.0",
        citation="Kermany et al., 2018, Cell; data: Kermany, Zhang & Goldbaum, 2018, Mendeley Data",
        raw_layout="npz", patient_ids=True, source_group="kermany2018",
        notes="5,840 images of 3,103 patients; arrays images, labels, patient_ids, subtype (normal / bacteria / "
              "virus), original_split. 170 patients occur in both original splits: split by patient_ids. "
              "Same images as PneumoniaMNIST."),
)
