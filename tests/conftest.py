"""Shared test setup: everything offline, always."""

import os

# set before transformers/datasets are imported by any test module
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
