"""Published numbers as data (published.csv), and this run's numbers compared with them: `published` loads the
table, `measured` and `sources` turn a run's outputs into measured rows, `compare` lines the two up."""
