"""open_clip backbones: tiny shapes-world CLIPs (configs, pretraining) and real architectures (tags, local weights).

Modules: config (params section), tiny (architectures registered with open_clip), load (Backbone, loaders,
fingerprints), pretrain (contrastive training), stage (stage entry point), hooks (tower hooks). Import the module you
need: the package itself imports nothing, so params validation stays light (no torch).
"""
