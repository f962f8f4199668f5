-- The audio parts of a call's tokens (Realtime, Gemini Live, audio models):
-- parts of input_tokens, cached_input_tokens and output_tokens, priced at
-- audio rates (docs/record.md).
ALTER TABLE {db}.{table} {on_cluster} ADD COLUMN IF NOT EXISTS input_audio_tokens Nullable(UInt64);
ALTER TABLE {db}.{table} {on_cluster} ADD COLUMN IF NOT EXISTS cached_audio_tokens Nullable(UInt64);
ALTER TABLE {db}.{table} {on_cluster} ADD COLUMN IF NOT EXISTS output_audio_tokens Nullable(UInt64);
