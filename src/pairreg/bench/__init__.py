"""The paper's studies (depth, ablation, QM9 table): cell grids, a resumable runner, tables and plots."""
