"""The recipe behind ``scripts/build_sampled_dataset.py`` (and
``scripts/build_pretraining_corpus.py``), one job per module.

- ``common``: the vocabularies (AudioSet names and ids, ancestors) and class sets
  (``--classes default|novel``), split sizes, seeds, errors.
- ``sources``: the Debian packages used, how their files are found, grouped and licensed,
  and the source-disjoint train/val/eval split of the groups.
- ``audio``: decoding recordings, and signal helpers (levels, fades, reverb, crops).
- ``planning``: each clip's split, duration, classes, source groups and mixing gains.
- ``synthesis``: rendering the plan (FluidSynth for SoundFont presets, TiMidity++ for freepats
  patches, arranged recordings for kits, tabla, speech and animals), reverb and the mix.
- ``layout``: the FSD50K-layout ground-truth CSVs, the source tables and the README.
- ``corpus``: the unlabelled pretraining corpus of ``scripts/build_pretraining_corpus.py``
  (its sources, the exclusion of the labelled datasets' eval and val sources, the hour
  budget, decoding and rendering into FLAC files, its README).
"""
