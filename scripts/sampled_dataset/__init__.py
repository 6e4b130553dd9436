"""The recipe behind ``scripts/build_sampled_dataset.py``, one job per module.

- ``common``: the vocabularies (AudioSet names and ids, ancestors) and class sets
  (``--classes default|novel``), split sizes, seeds, errors.
- ``sources``: the Debian packages used, how their files are found, grouped and licensed,
  and the source-disjoint train/val/eval split of the groups.
- ``audio``: decoding recordings, and signal helpers (levels, fades, reverb, crops).
- ``planning``: each clip's split, duration, classes, source groups and mixing gains.
- ``synthesis``: rendering the plan (FluidSynth for SoundFont presets, TiMidity++ for freepats
  patches, arranged recordings for kits, tabla, speech and animals), reverb and the mix.
- ``layout``: the FSD50K-layout ground-truth CSVs, the source tables and the README.
"""
