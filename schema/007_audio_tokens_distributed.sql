-- Cluster only: the Distributed table gets the audio columns too.
-- {cluster_only}
ALTER TABLE {db}.llm_calls {on_cluster} ADD COLUMN IF NOT EXISTS input_audio_tokens Nullable(UInt64);
ALTER TABLE {db}.llm_calls {on_cluster} ADD COLUMN IF NOT EXISTS cached_audio_tokens Nullable(UInt64);
ALTER TABLE {db}.llm_calls {on_cluster} ADD COLUMN IF NOT EXISTS output_audio_tokens Nullable(UInt64);
