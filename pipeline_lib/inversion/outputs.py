"""Names of the files the inversion stage publishes, shared with the stages that read them."""

# Per-query average precision inside the stage's output folder (polars parquet), one row per (method, step, query):
# direction "image" | "text", method "image_to_image" | "oti_to_image" | "text_to_text" | "ovi_to_text", step (int,
# -1 for the intra-modal baselines, every recorded step for the inverted methods), query (int, row of the direction's
# query set), split "val" | "test", ap (float64). For paired comparisons (bootstrap over the test queries).
PER_QUERY_AP = "per_query_ap.parquet"
# Every retrieval number per direction (mAP, mAP@R, R-precision, R@1 of each method; mAP per step over val and test;
# query counts; final losses): the metrics file keeps the mAPs a reader compares (`stage.headline`).
RETRIEVAL = "retrieval.json"
