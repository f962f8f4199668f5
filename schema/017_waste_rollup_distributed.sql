-- Cluster only: the Distributed llm_calls gets the repeat columns, and the
-- waste and prefix rollups their query-facing names.
-- {cluster_only}
ALTER TABLE {db}.llm_calls {on_cluster}
    ADD COLUMN IF NOT EXISTS prompt_repeat UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS conversation_turn UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS conversation_first_input UInt64 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS conversation_growing UInt8 DEFAULT 0;
CREATE TABLE IF NOT EXISTS {db}.llm_waste_1h {on_cluster} AS {db}.{waste_1h}
ENGINE = Distributed({cluster}, {db}, {waste_1h});
CREATE TABLE IF NOT EXISTS {db}.llm_prefixes_1h {on_cluster} AS {db}.{prefixes_1h}
ENGINE = Distributed({cluster}, {db}, {prefixes_1h});
