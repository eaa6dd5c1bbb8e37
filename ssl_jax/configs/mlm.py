"""python -m ssl_jax.main --config=configs/mlm.py --workdir=runs/mlm

Masked language modelling (BERT; Devlin et al., NAACL 2019) of a small
Transformer over byte tokens, then a linear probe and kNN of its mean-pooled
features. On the embedded `pydoc` default (the Python documentation topics,
chunks of 128 bytes labelled by topic, 30 classes; see ssl_jax/data/text.py)
it takes a few minutes on 2 CPU cores and the probe of the pretrained encoder
should beat the same encoder at random initialisation (see README for the
figures).

Variants, picked by the argument after the colon (comma-separated):
  configs/mlm.py:runlocal                       tiny Transformer, a handful of steps (tests)
  configs/mlm.py:dataset=tfds:ag_news_subset    a prepared TFDS text dataset (Text and
  configs/mlm.py:dataset=tfds:imdb_reviews      ClassLabel features), first 128 bytes each
  configs/mlm.py:dataset=pydoc:length=64        shorter chunks (more of them)
  configs/mlm.py:mask_rate=0.3                  another share of chosen positions (BERT: 15%)
"""

from ssl_jax import config_lib

MODALITY = "text"  # batches hold `tokens`; the image-only tests skip this config
_FAMILY = "token_transformer"


def get_config(arg: str | None = None):
    options = config_lib.options(arg, dataset="pydoc", mask_rate=0.15)
    config_lib.image_only_options(options, "mlm", _FAMILY)
    config = config_lib.base_config()
    config.task = "mlm"
    config.dataset = options.dataset
    # Text has no image size: image_size only satisfies the shared fields.
    config_lib.update(
        config,
        {
            # BERT's rule: 15% chosen; of those 80% [MASK], 10% random, 10% kept.
            "task_kwargs": {"mask_rate": options.mask_rate},
            # Width 64, depth 2 over 128 bytes: ~0.1 GFLOP per sequence, so 1000
            # steps take minutes on 2 CPU cores (width 128, depth 4: 0.78, ~40 min).
            # Features: the last layer's mean next to the token embeddings'
            # mean (models/sequence.py POOLS), a rule set before measuring
            # (the last layer alone probed below a random encoder; its
            # embeddings' mean is a learned bag of bytes).
            "model_kwargs": {
                "embed_dim": 64,
                "depth": 2,
                "num_heads": 4,
                "pool": "embedding_and_last",
            },
            "batch_size": 64,
            # 600 steps: ~10 min on 2 shared CPU cores (1000 took 15).
            "train_steps": 600,
            "log_every": 50,
            # AdamW, warm-up then cosine (BERT: linear decay); the rate is per 256
            # sequences (linear scaling): 1e-3 at batch 64.
            "optimizer": {
                "name": "adamw",
                "learning_rate": 4e-3,
                "warmup_fraction": 100 / 600,
                "b2": 0.999,
                "weight_decay": 0.01,
            },
            # The smallest topics have 16 training chunks.
            "probe": {"labels_per_class": (5, 10)},
        },
    )
    # The no-network baseline: each chunk as its byte frequencies, probed alike.
    config.evals.bag_of_bytes = {"type": "bag_of_tokens"}
    config = config_lib.finish(config, options, "", encoder=_FAMILY)
    # CPU-sized: float32 on the embedded corpus, bfloat16 for TFDS corpora (accelerators).
    embedded = options.dataset.startswith("pydoc") or options.runlocal
    config.compute_dtype = "float32" if embedded else "bfloat16"
    return config
