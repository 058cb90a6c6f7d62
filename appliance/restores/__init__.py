"""The restore domain the restore page uses: browsing committed snapshots (tree, search,
archives), push-restore jobs and their job views, and the restore ledger (what the service
level of restores is measured on). Owns the `restores` and `restore_jobs` tables."""
