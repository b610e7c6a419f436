-- sweep: applies what came due (Store::sweep): deadlines expire queued
-- jobs, lapsed leases requeue or fail theirs, retries become runnable,
-- jobs past their TTL are forgotten.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- ARGV[3]  how many due items to apply, at most
--
-- Returns {next due (ms) or ''}: at or before now when the limit cut the
-- sweep short.

local due = apply_due(tonumber(ARGV[3]))
if due then
  return {n2s(due)}
end
return {''}
