"""The 5 FGVC tasks and the 19 VTAB-1k tasks (general-domain benchmarks; VTAB-1k has some medical ones)."""
from medvtab.data.catalogue.taskinfo import DR_GRADES, TaskInfo

_VTAB = "VTAB-1k: Zhai et al., 2019, arXiv:1910.04867"
_VTAB_NOTE = ("VTAB-1k: 800 train + 200 val images (1,000) from the source's train split, test on the source's "
              "test split; splits as in VPT (Jia et al., 2022).")

FGVC_AND_VTAB_1K: tuple[TaskInfo, ...] = (
    # ------------------------------------------------------------------ FGVC
    TaskInfo(
        name="cub-200-2011", title="CUB-200-2011", benchmark="fgvc", modality="natural", organ="n/a",
        task_type="multi-class", classes=200, images=None,
        download="https://www.vision.caltech.edu/datasets/cub_200_2011/", licence="see source",
        citation="Wah et al., 2011, Caltech tech. rep. CNS-TR-2011-001", raw_layout="imagefolder",
        patient_ids=False, source_group="cub-200-2011",
        notes="Birds; 11,788 images in the source. Train/val split as in VPT (Jia et al., 2022)."),
    TaskInfo(
        name="oxford-flowers102", title="Oxford Flowers-102", benchmark="fgvc", modality="natural", organ="n/a",
        task_type="multi-class", classes=102, images=None,
        download="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/", licence="see source",
        citation="Nilsback & Zisserman, 2008, ICVGIP", raw_layout="csv", patient_ids=False,
        source_group="oxford-flowers102",
        notes="8,189 images in the source, labels in a .mat file. Same images as VTAB-1k Flowers102."),
    TaskInfo(
        name="stanford-cars", title="Stanford Cars", benchmark="fgvc", modality="natural", organ="n/a",
        task_type="multi-class", classes=196, images=None,
        download="https://ai.stanford.edu/~jkrause/cars/car_dataset.html", licence="see source",
        citation="Krause et al., 2013, ICCV Workshops (3dRR); cited in the paper as Gebru et al., 2017, AAAI",
        raw_layout="csv", patient_ids=False, source_group="stanford-cars",
        notes="16,185 images in the source, labels in .mat files; the original page has been offline at times."),
    TaskInfo(
        name="stanford-dogs", title="Stanford Dogs", benchmark="fgvc", modality="natural", organ="n/a",
        task_type="multi-class", classes=120, images=None,
        download="http://vision.stanford.edu/aditya86/ImageNetDogs/",
        licence="ImageNet terms of access (non-commercial research and education); see source",
        citation="Khosla et al., 2011, CVPR Workshop on Fine-Grained Visual Categorization",
        raw_layout="imagefolder", patient_ids=False, source_group="stanford-dogs",
        notes="20,580 images, all taken from ImageNet: backbones pre-trained on ImageNet-1k/21k have seen them."),
    TaskInfo(
        name="nabirds", title="NABirds", benchmark="fgvc", modality="natural", organ="n/a",
        task_type="multi-class", classes=555, images=None, download="https://dl.allaboutbirds.org/nabirds",
        licence="Cornell Lab of Ornithology terms of use (non-commercial research); see source",
        citation="Van Horn et al., 2015, CVPR", raw_layout="imagefolder", patient_ids=False,
        source_group="nabirds", notes="48,562 images in the source; folders by numeric class id."),
    # ------------------------------------------------------------------ VTAB-1k, natural
    TaskInfo(
        name="vtab-caltech101", title="Caltech101", benchmark="vtab-1k", modality="natural", organ="n/a",
        task_type="multi-class", classes=102, images=None, download="https://data.caltech.edu/records/mzrjq-6wc02",
        licence="CC BY 4.0", citation=f"Fei-Fei, Fergus & Perona, 2004, CVPR Workshop (GMBV); {_VTAB}",
        raw_layout="csv", patient_ids=False, source_group="caltech101",
        notes=f"101 object categories + background. {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-cifar100", title="CIFAR-100", benchmark="vtab-1k", modality="natural", organ="n/a",
        task_type="multi-class", classes=100, images=None, download="https://www.cs.toronto.edu/~kriz/cifar.html",
        licence="no explicit licence; research use with citation (see source)",
        citation=f"Krizhevsky, 2009, tech. rep. (Learning Multiple Layers of Features from Tiny Images); {_VTAB}",
        raw_layout="csv", patient_ids=False, source_group="cifar100", notes=_VTAB_NOTE),
    TaskInfo(
        name="vtab-dtd", title="DTD (Describable Textures)", benchmark="vtab-1k", modality="natural", organ="n/a",
        task_type="multi-class", classes=47, images=None, download="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
        licence="research use (see source)", citation=f"Cimpoi et al., 2014, CVPR; {_VTAB}", raw_layout="csv",
        patient_ids=False, source_group="dtd", notes=_VTAB_NOTE),
    TaskInfo(
        name="vtab-flowers102", title="Oxford Flowers102", benchmark="vtab-1k", modality="natural", organ="n/a",
        task_type="multi-class", classes=102, images=None,
        download="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/", licence="see source",
        citation=f"Nilsback & Zisserman, 2008, ICVGIP; {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="oxford-flowers102", notes=f"Same images as FGVC Oxford Flowers-102. {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-pets", title="Oxford-IIIT Pets", benchmark="vtab-1k", modality="natural", organ="n/a",
        task_type="multi-class", classes=37, images=None, download="https://www.robots.ox.ac.uk/~vgg/data/pets/",
        licence="CC BY-SA 4.0", citation=f"Parkhi et al., 2012, CVPR; {_VTAB}", raw_layout="csv",
        patient_ids=False, source_group="oxford-iiit-pets", notes=_VTAB_NOTE),
    TaskInfo(
        name="vtab-svhn", title="SVHN", benchmark="vtab-1k", modality="natural", organ="n/a",
        task_type="multi-class", classes=10, images=None, download="http://ufldl.stanford.edu/housenumbers/",
        licence="non-commercial use only (see source)",
        citation=f"Netzer et al., 2011, NIPS Workshop on Deep Learning and Unsupervised Feature Learning; {_VTAB}",
        raw_layout="csv", patient_ids=False, source_group="svhn", notes=_VTAB_NOTE),
    TaskInfo(
        name="vtab-sun397", title="SUN397", benchmark="vtab-1k", modality="natural", organ="n/a",
        task_type="multi-class", classes=397, images=None, download="https://vision.princeton.edu/projects/2010/SUN/",
        licence="see source", citation=f"Xiao et al., 2010, CVPR; {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="sun397", notes=_VTAB_NOTE),
    # ------------------------------------------------------------------ VTAB-1k, specialized
    TaskInfo(
        name="vtab-patch-camelyon", title="Patch Camelyon", benchmark="vtab-1k", modality="specialized",
        organ="lymph node", task_type="multi-class", classes=2, images=None,
        download="https://github.com/basveeling/pcam", licence="CC0 1.0",
        citation=f"Veeling et al., 2018, MICCAI; {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="pcam-camelyon16",
        notes=f"96x96 H&E histopathology patches from Camelyon16 (Bejnordi et al., 2017), metastasis yes/no. "
              f"{_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-eurosat", title="EuroSAT", benchmark="vtab-1k", modality="specialized", organ="n/a",
        task_type="multi-class", classes=10, images=None, download="https://github.com/phelber/EuroSAT",
        licence="MIT (as stated in the source repository)", citation=f"Helber et al., 2019, IEEE JSTARS; {_VTAB}",
        raw_layout="csv", patient_ids=False, source_group="eurosat",
        notes=f"Sentinel-2 satellite land-use images (RGB). {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-resisc45", title="RESISC45", benchmark="vtab-1k", modality="specialized", organ="n/a",
        task_type="multi-class", classes=45, images=None,
        download="https://www.tensorflow.org/datasets/catalog/resisc45", licence="see source",
        citation=f"Cheng, Han & Lu, 2017, Proceedings of the IEEE; {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="resisc45", notes=f"NWPU remote-sensing scene classification. {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-retinopathy", title="Diabetic Retinopathy", benchmark="vtab-1k", modality="specialized",
        organ="eye", task_type="ordinal", classes=DR_GRADES, images=None,
        download="https://www.kaggle.com/c/diabetic-retinopathy-detection",
        licence="Kaggle competition rules (EyePACS data); see source",
        citation=f"Kaggle Diabetic Retinopathy Detection, 2015 (EyePACS); {_VTAB}", raw_layout="csv",
        patient_ids=False, source_group="kaggle-dr-2015",
        notes=f"Same images as Med-VTAB EyePACS: never pre-train on one and evaluate on the other. The VTAB-1k "
              f"image lists carry no patient ids. {_VTAB_NOTE}"),
    # ------------------------------------------------------------------ VTAB-1k, structured
    TaskInfo(
        name="vtab-clevr-count", title="Clevr/count", benchmark="vtab-1k", modality="structured", organ="n/a",
        task_type="multi-class", classes=8, images=None, download="https://cs.stanford.edu/people/jcjohns/clevr/",
        licence="CC BY 4.0", citation=f"Johnson et al., 2017, CVPR; {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="clevr", notes=f"Number of objects (3-10). {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-clevr-distance", title="Clevr/distance", benchmark="vtab-1k", modality="structured",
        organ="n/a", task_type="multi-class", classes=6, images=None,
        download="https://cs.stanford.edu/people/jcjohns/clevr/", licence="CC BY 4.0",
        citation=f"Johnson et al., 2017, CVPR; {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="clevr", notes=f"Depth of the closest object, binned. {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-dmlab", title="DMLab", benchmark="vtab-1k", modality="structured", organ="n/a",
        task_type="multi-class", classes=6, images=None, download="https://www.tensorflow.org/datasets/catalog/dmlab",
        licence="see source", citation=f"Beattie et al., 2016, arXiv:1612.03801 (DeepMind Lab); {_VTAB}",
        raw_layout="csv", patient_ids=False, source_group="dmlab",
        notes=f"Distance to a rewarding object in DeepMind Lab frames, binned. {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-kitti-distance", title="KITTI/distance", benchmark="vtab-1k", modality="structured",
        organ="n/a", task_type="multi-class", classes=4, images=None, download="https://www.cvlibs.net/datasets/kitti/",
        licence="CC BY-NC-SA 3.0", citation=f"Geiger et al., 2013, International Journal of Robotics Research; {_VTAB}",
        raw_layout="csv", patient_ids=False, source_group="kitti",
        notes=f"Distance to the closest vehicle, binned. {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-dsprites-location", title="dSprites/location", benchmark="vtab-1k", modality="structured",
        organ="n/a", task_type="multi-class", classes=16, images=None,
        download="https://github.com/google-deepmind/dsprites-dataset", licence="Apache 2.0",
        citation=f"Matthey et al., 2017, dSprites dataset (GitHub); {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="dsprites", notes=f"Binned x position. {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-dsprites-orientation", title="dSprites/orientation", benchmark="vtab-1k",
        modality="structured", organ="n/a", task_type="multi-class", classes=16, images=None,
        download="https://github.com/google-deepmind/dsprites-dataset", licence="Apache 2.0",
        citation=f"Matthey et al., 2017, dSprites dataset (GitHub); {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="dsprites", notes=f"Binned orientation. {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-smallnorb-azimuth", title="SmallNORB/azimuth", benchmark="vtab-1k", modality="structured",
        organ="n/a", task_type="multi-class", classes=18, images=None,
        download="https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/", licence="see source",
        citation=f"LeCun, Huang & Bottou, 2004, CVPR; {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="smallnorb", notes=f"Camera azimuth. {_VTAB_NOTE}"),
    TaskInfo(
        name="vtab-smallnorb-elevation", title="SmallNORB/elevation", benchmark="vtab-1k", modality="structured",
        organ="n/a", task_type="multi-class", classes=9, images=None,
        download="https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/", licence="see source",
        citation=f"LeCun, Huang & Bottou, 2004, CVPR; {_VTAB}", raw_layout="csv", patient_ids=False,
        source_group="smallnorb", notes=f"Camera elevation. {_VTAB_NOTE}"),
)
