"""The reproducible studies behind the README's figures: one subpackage per study (`losses`, `diagnose`,
`scaling`, `schedule`), each exporting its presets, `run_<name>_study` and its report; shared parts in
`common`.  To add a study, see docs/ARCHITECTURE.md."""
