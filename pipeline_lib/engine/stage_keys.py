"""The params keys that version a family of stages: one list each, so the registry stays readable and a test can keep
each list equal to its section's fields."""

#: The keys of the `features` section that decide how anything is encoded: every feature stage's fingerprint (the
#: other one is the CZSL tokens switch; a test keeps this list equal to the section's fields).
EXTRACTION = tuple(f"features.{key}" for key in (
    "batch_size", "views", "augment", "seed", "dtype", "amp", "rows_per_chunk", "rows_per_shard"))

#: The keys of the `czsl` section that decide what a `czsl` instance computes: all but `czsl.dataset`, which only
#: says whose results the claims read (a test keeps this list equal to the section's fields but that one).
CZSL_TRAINING = tuple(f"czsl.{key}" for key in (
    "worlds", "ow_filter", "ow_word_vectors", "context_length", "prompt_init", "attr_dropout", "logit_scale",
    "w_attr", "w_obj", "sa_topk", "sa_chunk", "vac_blocks", "vac_heads", "vac_mlp_ratio", "vac_dropout", "kl_alpha",
    "kl_temperature", "w_sa", "w_vac", "w_bank", "mode", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets",
    "lora_lr", "epochs", "lr", "batch_size", "weight_decay", "eval_every", "select_window", "bank_slots", "bank_key",
    "bank_alpha_grid", "bank_beta_grid", "bank_gate_grid", "bank_temperature_grid", "bank_text_entropy",
    "stream_seeds", "rows", "seeds"))

#: The keys of the `inversion` section that decide what an `oti` / `ovi` instance computes (the others pin the claims;
#: a test keeps the two lists together equal to the section's fields but those).
_INVERSION = ("inversion.seed", "inversion.amp", "inversion.max_queries", "inversion.blocks_per_shard",
              "inversion.val_fraction", "inversion.query_chunk")
OTI_KEYS = (*_INVERSION, "inversion.oti", "inversion.plot_steps", "inversion.histogram_bins")
OVI_KEYS = (*_INVERSION, "inversion.ovi")
