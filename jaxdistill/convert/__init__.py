"""Hugging Face import/export: one mapping table per architecture family, plus directory I/O."""
from jaxdistill.convert.hf_dir import (
    FAMILIES,
    SUPPORTED,
    detect_architecture,
    read_hf_config,
    read_hf_dir,
    read_tensors,
    write_hf_dir,
)

__all__ = ["FAMILIES", "SUPPORTED", "detect_architecture", "read_hf_config", "read_hf_dir",
           "read_tensors", "write_hf_dir"]
