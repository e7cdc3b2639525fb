"""The 23 Med-VTAB tasks of the DynaMer paper's appendix A: A.1 colour, A.2 X-ray, A.3 OCT/CT/MRI."""
from medvtab.data.catalogue.taskinfo import DR_GRADES, TaskInfo

_TCIA = "TCIA Data Usage Policy"

MED_VTAB: tuple[TaskInfo, ...] = (
    # ------------------------------------------------------------------ Med-VTAB A.1: colour images
    TaskInfo(
        name="hyperkvasir", title="HyperKvasir", benchmark="med-vtab", modality="colour", organ="polyp",
        task_type="multi-class",
        classes=("barretts", "barretts-short-segment", "bbps-0-1", "bbps-2-3", "cecum", "dyed-lifted-polyps",
                 "dyed-resection-margins", "esophagitis-a", "esophagitis-b-d", "hemorrhoids", "ileum",
                 "impacted-stool", "polyps", "pylorus", "retroflex-rectum", "retroflex-stomach",
                 "ulcerative-colitis-grade-0-1", "ulcerative-colitis-grade-1", "ulcerative-colitis-grade-1-2",
                 "ulcerative-colitis-grade-2", "ulcerative-colitis-grade-2-3", "ulcerative-colitis-grade-3",
                 "z-line"),
        images=110_079, download="https://datasets.simula.no/hyper-kvasir/", licence="CC BY 4.0",
        citation="Borgli et al., 2020, Scientific Data", raw_layout="imagefolder", patient_ids=False,
        source_group="hyperkvasir",
        notes="GI endoscopy. 110,079 images in all, of which 10,662 are labelled into the 23 classes (the rest "
              "unlabelled). Same hospital system as Kvasir; image overlap with Kvasir not established here."),
    TaskInfo(
        name="mesad-prostatectomy", title="MESAD Prostatectomy", benchmark="med-vtab", modality="colour",
        organ="prostatectomy", task_type="multi-class", classes=21, images=29_454,
        download="https://saras-mesad.grand-challenge.org/", licence="research use; see source",
        citation="Bawa et al., 2021, arXiv:2104.03178 (SARAS-ESAD)", raw_layout="csv", patient_ids=False,
        source_group="saras-mesad",
        notes="Endoscopic frames of robotic radical prostatectomy (SARAS multi-domain ESAD challenge, MICCAI "
              "2021) with 21 surgeon-action classes; the source annotates bounding boxes and a frame can carry "
              "several actions, the benchmark uses it as action classification. Ids are procedures/videos, "
              "not patients."),
    TaskInfo(
        name="amlc", title="AML Cytomorphology (AMLC)", benchmark="med-vtab", modality="colour", organ="cell",
        task_type="multi-class",
        classes=("BAS", "EBO", "EOS", "KSC", "LYA", "LYT", "MMZ", "MOB", "MON", "MYB", "MYO", "NGB", "NGS",
                 "PMB", "PMO"),
        images=18_365, download="https://www.cancerimagingarchive.net/collection/aml-cytomorphology_lmu/",
        licence=f"{_TCIA}; Creative Commons Attribution (version: see source)",
        citation="Matek et al., 2019, Nature Machine Intelligence", raw_layout="imagefolder", patient_ids=False,
        source_group="aml-cytomorphology-lmu",
        notes="Single white-blood-cell images from peripheral blood smears (TCIA AML-Cytomorphology_LMU), "
              "15 morphological classes (abbreviations as published)."),
    TaskInfo(
        name="aptos", title="APTOS 2019 Blindness Detection", benchmark="med-vtab", modality="colour",
        organ="eye", task_type="ordinal", classes=DR_GRADES, images=3_662,
        download="https://www.kaggle.com/c/aptos2019-blindness-detection/data",
        licence="Kaggle competition rules; see source",
        citation="Asia Pacific Tele-Ophthalmology Society, 2019, Kaggle (APTOS 2019 Blindness Detection)",
        raw_layout="csv", patient_ids=False, source_group="aptos2019",
        notes="Colour fundus photographs, diabetic-retinopathy grade 0-4 (ordinal). 3,662 = labelled train set."),
    TaskInfo(
        name="isic", title="ISIC 2019 skin lesions", benchmark="med-vtab", modality="colour", organ="skin",
        task_type="multi-class", classes=("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"),
        images=25_331, download="https://challenge.isic-archive.com/data/#2019", licence="CC BY-NC 4.0",
        citation="Tschandl et al., 2018, Scientific Data (HAM10000); Codella et al., 2018, ISBI; "
                 "Combalia et al., 2019, arXiv:1908.02288 (BCN20000)",
        raw_layout="csv", patient_ids=False, source_group="isic2019",
        notes="Dermoscopy, ISIC 2019 training set (25,331 images, 9 label columns incl. UNK, which has no "
              "training images). The paper uses the Kaggle mirror andrewmvd/isic-2019. Metadata has lesion "
              "ids for part of the images, not patient ids."),
    TaskInfo(
        name="kvasir", title="Kvasir v2", benchmark="med-vtab", modality="colour", organ="polyp",
        task_type="multi-class",
        classes=("dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum", "normal-pylorus",
                 "normal-z-line", "polyps", "ulcerative-colitis"),
        images=6_000, download="https://datasets.simula.no/kvasir/",
        licence="research and educational use only, with citation (see source)",
        citation="Pogorelov et al., 2017, ACM MMSys", raw_layout="imagefolder", patient_ids=False,
        source_group="kvasir-v2",
        notes="GI endoscopy, 8 classes. The paper text (as transcribed) gives 6,000 images, but Kvasir v2, "
              "which it cites (Kaggle mirror plhalvorsen/kvasir-v2-a-gastrointestinal-tract-dataset), has 8,000 "
              "(1,000 per class); the 6,000 may be a transcription error."),
    TaskInfo(
        name="lhncbc-malaria", title="LHNCBC Malaria cell images", benchmark="med-vtab", modality="colour",
        organ="cell", task_type="multi-class", classes=("parasitized", "uninfected"), images=27_560,
        download="https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#malaria-datasets",
        licence="public release by the US National Library of Medicine, no explicit licence stated; see source",
        citation="Rajaraman et al., 2018, PeerJ", raw_layout="imagefolder", patient_ids=False,
        source_group="nlm-malaria",
        notes="Segmented thin-blood-smear cells (Giemsa). The source has 27,558 images in 2 classes; the paper "
              "text (as transcribed) says 27,560 images and '12 classes'. File names carry slide codes; no "
              "patient-id table is published with the cell images."),
    TaskInfo(
        name="mllbone", title="MLL bone marrow cytomorphology", benchmark="med-vtab", modality="colour",
        organ="cell", task_type="multi-class",
        classes=("ABE", "ART", "BAS", "BLA", "EBO", "EOS", "FGC", "HAC", "KSC", "LYI", "LYT", "MMZ", "MON",
                 "MYB", "NGB", "NGS", "NIF", "OTH", "PEB", "PLM", "PMO"),
        images=171_374,
        download="https://www.cancerimagingarchive.net/collection/bone-marrow-cytomorphology_mll_helmholtz_fraunhofer/",
        licence="CC BY 4.0", citation="Matek et al., 2021, Blood", raw_layout="imagefolder", patient_ids=False,
        source_group="mll-bone-marrow",
        notes="Bone-marrow smear single cells from 945 patients (TCIA "
              "Bone-Marrow-Cytomorphology_MLL_Helmholtz_Fraunhofer), 21 classes (abbreviations as published); "
              "images are grouped by class, without a per-image patient mapping."),
    TaskInfo(
        name="eyepacs", title="EyePACS (Kaggle Diabetic Retinopathy Detection)", benchmark="med-vtab",
        modality="colour", organ="eye", task_type="ordinal", classes=DR_GRADES, images=88_702,
        download="https://www.kaggle.com/c/diabetic-retinopathy-detection",
        licence="Kaggle competition rules (EyePACS data); see source",
        citation="Cuadros & Bresnick, 2009, J Diabetes Sci Technol (EyePACS); Kaggle Diabetic Retinopathy "
                 "Detection, 2015",
        raw_layout="csv", patient_ids=True, source_group="kaggle-dr-2015",
        notes="Colour fundus, DR grade 0-4 (ordinal); 88,702 = 35,126 train + 53,576 test. File names are "
              "<patient>_<left|right>, so both eyes of a patient must stay in one split. The paper links the "
              "preprocessed mirror kaggle.com/datasets/mariaherrerot/eyepacspreprocess. Same images as "
              "VTAB-1k Retinopathy."),
    # ------------------------------------------------------------------ Med-VTAB A.2: X-ray
    TaskInfo(
        name="vindr-cxr", title="VinDr-CXR", benchmark="med-vtab", modality="x-ray", organ="lung",
        task_type="multi-label",
        classes=("aortic enlargement", "atelectasis", "calcification", "cardiomegaly", "consolidation", "ILD",
                 "infiltration", "lung opacity", "nodule/mass", "other lesion", "pleural effusion",
                 "pleural thickening", "pneumothorax", "pulmonary fibrosis"),
        images=18_000, download="https://physionet.org/content/vindr-cxr/1.0.0/",
        licence="PhysioNet credentialed access with data use agreement (research and education only); see source",
        citation="Nguyen et al., 2022, Scientific Data", raw_layout="dicom", patient_ids=False,
        source_group="vindr-cxr",
        notes="Posteroanterior chest radiographs (15,000 train / 3,000 test). The source has 22 local and 6 "
              "global labels; the 14 findings listed are those of the VinBigData Kaggle challenge, which the "
              "paper's '14 critical findings' matches. Image ids are anonymised hashes, no patient ids."),
    TaskInfo(
        name="cbis-ddsm", title="CBIS-DDSM", benchmark="med-vtab", modality="x-ray", organ="breast",
        task_type="multi-class", classes=3, images=10_239,
        download="https://www.cancerimagingarchive.net/collection/cbis-ddsm/", licence="CC BY 3.0",
        citation="Lee et al., 2017, Scientific Data", raw_layout="dicom", patient_ids=True, source_group="ddsm",
        notes="Scanned-film mammograms (full images, ROI masks and crops). The paper says normal / benign / "
              "malignant; the source's pathology labels are BENIGN, BENIGN_WITHOUT_CALLBACK and MALIGNANT. "
              "Patient ids (P_xxxxx) are in the case-description CSVs."),
    TaskInfo(
        name="covidx", title="COVIDx", benchmark="med-vtab", modality="x-ray", organ="lung",
        task_type="multi-class", classes=4, images=194_922, download="https://github.com/lindawangg/COVID-Net",
        licence="compiled from several public sources, each under its own licence; see source",
        citation="Wang, Lin & Wong, 2020, Scientific Reports (COVID-Net)", raw_layout="csv", patient_ids=True,
        source_group="covidx",
        notes="A compilation, not one collection. The paper lists it under X-ray and cites COVID-Net (chest "
              "X-ray), but 194,922 is the size of COVIDx CT-2A (CT slices, github.com/haydengunraj/"
              "COVIDNet-CT), which includes CC-CCII, MosMedData and other CT sets; the COVIDx CXR releases "
              "include RSNA Pneumonia images. Partial overlap with those tasks. Label files carry patient ids."),
    TaskInfo(
        name="symh-shoulder", title="SYMH shoulder X-ray", benchmark="med-vtab", modality="x-ray",
        organ="shoulder", task_type="multi-class", classes=4, images=1_049,
        download="https://www.kaggle.com/datasets/dryari5/shoulder-xray-classification", licence="see source",
        citation="Shoulder X-ray Classification, Kaggle dataset (dryari5)", raw_layout="imagefolder",
        patient_ids=False, source_group="symh-shoulder",
        notes="Shoulder radiographs (SYMH, presumably Sun Yat-sen Memorial Hospital), 4 categories per the "
              "paper; the class names, layout and licence were not verified here."),
    TaskInfo(
        name="rsna-bone-age", title="RSNA Pediatric Bone Age", benchmark="med-vtab", modality="x-ray",
        organ="bone", task_type="ordinal", classes=228, images=12_611,
        download="https://www.rsna.org/rsnai/ai-image-challenge/rsna-pediatric-bone-age-challenge-2017",
        licence="RSNA challenge data terms; see source", citation="Halabi et al., 2019, Radiology",
        raw_layout="csv", patient_ids=False, source_group="rsna-bone-age",
        notes="Paediatric hand radiographs; bone age in months (a regression target, used by the paper as 228 "
              "ordered age classes). 12,611 = challenge training set; CSV also gives sex."),
    TaskInfo(
        name="chexpert", title="CheXpert", benchmark="med-vtab", modality="x-ray", organ="chest",
        task_type="multi-label",
        classes=("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                 "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                 "Pleural Other", "Fracture", "Support Devices"),
        images=224_316, download="https://stanfordmlgroup.github.io/competitions/chexpert/",
        licence="Stanford University School of Medicine CheXpert Dataset Research Use Agreement (non-commercial)",
        citation="Irvin et al., 2019, AAAI", raw_layout="csv", patient_ids=True, source_group="chexpert",
        notes="224,316 radiographs of 65,240 patients; 14 observations labelled positive / negative / "
              "uncertain / blank by a report labeller. Paths carry patient and study ids."),
    TaskInfo(
        name="rsna-pneumonia", title="RSNA Pneumonia Detection", benchmark="med-vtab", modality="x-ray",
        organ="lung", task_type="multi-class", classes=2, images=29_684,
        download="https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
        licence="Kaggle competition rules; images from the NIH ChestX-ray14 release; see source",
        citation="Shih et al., 2019, Radiology: Artificial Intelligence", raw_layout="dicom", patient_ids=True,
        source_group="nih-chestxray14",
        notes="Chest radiographs from NIH ChestX-ray14 re-annotated for pneumonia (lung opacity). The paper "
              "says 29,684 images 'normal vs pneumothorax positive'; the source's classes are Normal, "
              "No Lung Opacity / Not Normal and Lung Opacity, and its training set has 26,684 images, so "
              "the paper's text looks mixed up. One image per patientId."),
    # ------------------------------------------------------------------ Med-VTAB A.3: OCT, CT, MRI
    TaskInfo(
        name="heidelberg-oct", title="Heidelberg OCT (Kermany retinal OCT)", benchmark="med-vtab",
        modality="oct/ct/mri", organ="eye", task_type="multi-class", classes=("CNV", "DME", "DRUSEN", "NORMAL"),
        images=84_495, download="https://data.mendeley.com/datasets/rscbjbr9sj/2", licence="CC BY 4.0",
        citation="Kermany et al., 2018, Cell; data: Kermany, Zhang & Goldbaum, 2018, Mendeley Data",
        raw_layout="imagefolder", patient_ids=True, source_group="kermany2018-oct",
        notes="Spectralis (Heidelberg) retinal OCT B-scans. File names are <class>-<patient id>-<n>. Same "
              "release as the Kermany chest X-rays but different images (separate source_group)."),
    TaskInfo(
        name="cc-ccii", title="CC-CCII", benchmark="med-vtab", modality="oct/ct/mri", organ="chest",
        task_type="multi-class", classes=("NCP", "CP", "Normal"), images=617_775,
        download="http://ncov-ai.big.ac.cn/download", licence="see source",
        citation="Zhang et al., 2020, Cell", raw_layout="imagefolder", patient_ids=True, source_group="cc-ccii",
        notes="China Consortium of Chest CT Image Investigation: CT slices of novel coronavirus pneumonia "
              "(NCP), common pneumonia (CP) and normal controls, grouped by patient and scan id. Part of the "
              "COVIDx CT compilation."),
    TaskInfo(
        name="mosmeddata", title="MosMedData COVID19_1110", benchmark="med-vtab", modality="oct/ct/mri",
        organ="chest", task_type="ordinal", classes=("CT-0", "CT-1", "CT-2", "CT-3", "CT-4"), images=1_110,
        download="https://mosmed.ai/datasets/covid19_1110/", licence="CC BY-NC-ND 3.0",
        citation="Morozov et al., 2020, arXiv:2005.06465", raw_layout="nifti", patient_ids=True,
        source_group="mosmeddata",
        notes="1,110 chest CT studies (one per patient, study ids) graded CT-0 to CT-4 by lung involvement "
              "(ordinal); the paper does not state which labels it uses. Part of the COVIDx CT compilation."),
    TaskInfo(
        name="covid-c", title="COVID-C (COVID-19 lung CT)", benchmark="med-vtab", modality="oct/ct/mri",
        organ="chest", task_type="multi-class", classes=2, images=349,
        download="https://github.com/mr7495/COVID-CTset", licence="see source",
        citation="Rahimzadeh, Attar & Sakhaei, 2021, Biomedical Signal Processing and Control",
        raw_layout="imagefolder", patient_ids=True, source_group="covid-c",
        notes="Unclear source: the paper cites Rahimzadeh et al. (COVID-CTset, 63,849 CT images of 377 "
              "patients, github.com/mr7495/COVID-CTset), but 349 is the number of COVID-positive images in "
              "UCSD COVID-CT (Yang et al., 2020, github.com/UCSD-AI4H/COVID-CT). Binary COVID vs non-COVID."),
    TaskInfo(
        name="ricord", title="RSNA RICORD", benchmark="med-vtab", modality="oct/ct/mri", organ="chest",
        task_type="multi-class", classes=None, images=120,
        download="https://www.cancerimagingarchive.net/collection/midrc-ricord-1a/",
        licence=f"{_TCIA}; listed as CC BY-NC 4.0 as far as known (verify on source)",
        citation="Tsai et al., 2021, Radiology", raw_layout="dicom", patient_ids=True, source_group="ricord",
        notes="MIDRC-RICORD-1a: 120 COVID-positive chest CT studies with expert segmentations (RICORD-1b has "
              "120 COVID-negative CTs, 1c is chest X-ray). The paper does not give the label set."),
    TaskInfo(
        name="ppmi", title="PPMI (Parkinson's Progression Markers Initiative)", benchmark="med-vtab",
        modality="oct/ct/mri", organ="brain", task_type="multi-class", classes=None, images=480,
        download="https://www.ppmi-info.org/access-data-specimens/download-data",
        licence="PPMI Data Use Agreement (application required)",
        citation="Marek et al., 2011, Progress in Neurobiology",
        raw_layout="dicom", patient_ids=True, source_group="ppmi",
        notes="Brain MRI from the PPMI study (access on application via LONI IDA, DICOM or NIfTI). The paper "
              "gives 480 scans but not the classes (usually Parkinson's disease vs healthy control)."),
    TaskInfo(
        name="brain-tumor-mri", title="Brain Tumor MRI Dataset", benchmark="med-vtab", modality="oct/ct/mri",
        organ="brain", task_type="multi-class", classes=("glioma", "meningioma", "notumor", "pituitary"),
        images=7_023, download="https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset",
        licence="see source (Kaggle compilation of figshare, SARTAJ and Br35H images, whose own terms apply)",
        citation="Nickparvar, 2021, Kaggle dataset (Brain Tumor MRI Dataset)", raw_layout="imagefolder",
        patient_ids=False, source_group="brain-tumor-mri-kaggle",
        notes="2-D MRI slices in 4 classes. The paper says 'detection and segmentation', but the set has "
              "class labels only."),
)
