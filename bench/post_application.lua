-- wrk script: POST one valid application per request, each under a fresh Idempotency-Key.
-- Environment: BENCH_BODY_FILE (the JSON body), BENCH_TOKEN (a portal API key), BENCH_KEY_PREFIX (unique per run);
-- optional: BENCH_RATE (requests per second per wrk thread: a fixed rate instead of as fast as answered),
-- BENCH_CONNECTIONS (connections per thread, with BENCH_RATE), BENCH_CASES_FILE (each thread appends the case ids
-- of its accepted applications to this path plus "-<thread>").
-- done() prints one JSON line with the counts and the latency percentiles (microseconds).

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")

local function now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
   return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
   body = file:read("*a")
   file:close()
   headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
   }
   prefix = os.getenv("BENCH_KEY_PREFIX") .. "-" .. id .. "-"
   sent = 0
   accepted = 0
   rejected = 0
   late = 0
   local cases_file = os.getenv("BENCH_CASES_FILE")
   if cases_file then
      cases = assert(io.open(cases_file .. "-" .. id, "w"))
   end
   local rate = tonumber(os.getenv("BENCH_RATE") or "")
   if rate then
      -- One schedule per thread: the request after each answer waits for the next free slot. Each connection's
      -- first request leaves at once and takes one of the first slots.
      interval = 1000 / rate
      next_slot = now_ms() + tonumber(os.getenv("BENCH_CONNECTIONS") or "1") * interval
   end
end

-- wrk calls delay() (when the script defines it) before each request but a connection's first.
if os.getenv("BENCH_RATE") then
   function delay()
      local now = now_ms()
      local slot = next_slot
      next_slot = next_slot + interval
      if now - slot > 100 then
         -- Every connection was still waiting for an answer: the system fell behind the rate.
         late = late + 1
      end
      return math.max(0, slot - now)
   end
end

function request()
   sent = sent + 1
   headers["Idempotency-Key"] = prefix .. sent
   return wrk.format("POST", "/v1/applications", headers, body)
end

function response(status, _headers, response_body)
   if status == 202 then
      accepted = accepted + 1
      if cases then
         cases:write(response_body:match('"case_id":"([^"]+)"') or "", "\n")
         cases:flush()
      end
   else
      rejected = rejected + 1
   end
end

function done(summary, latency, _requests)
   local ok, bad, behind = 0, 0, 0
   for _, thread in ipairs(threads) do
      ok = ok + thread:get("accepted")
      bad = bad + thread:get("rejected")
      behind = behind + thread:get("late")
   end
   local e = summary.errors
   io.write(string.format(
      '{"requests":%d,"accepted":%d,"rejected":%d,"late":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,' ..
      '"p95_us":%d,"p99_us":%d,"max_us":%d,"socket_errors":%d}\n',
      summary.requests, ok, bad, behind, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(95), latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout))
end
