-- claim: claims jobs for several workers at once, the claims that arrived
-- together (lines.rs, claim_line), each the runnable job first by priority
-- (with aging) then by age (Store::claim), as claiming.lua claims them.
--
-- KEYS[1..8], ARGV[1..2]: what every function takes first (prelude.lua).
-- ARGV[3]  the lease (ms)
-- ARGV[4]  the priority aging period (ms; '' for none)
-- ARGV[5]  how many due items to apply first, at most
-- ARGV[6]  how many jobs to claim, at most
--
-- Returns {next due, job...}: the next due time (ms; '' when every claim
-- got a job or nothing is due), then one list per claimed job: its fields
-- as read, followed by what the claim changed ('life' and its new value,
-- then each field it deleted with no value: false, a nil in the answer).
-- One list per job, as Redis converts each table of an answer at a cost
-- beyond its strings.

local out = {''}
out[1] = claim_ready(tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), out)
return out
