-- wrk script for backend's benchmark: authrep.xml rotating over the 100 services x 100 applications that
-- `backend-bench seed URL` creates. Each wrk thread starts at a different offset.
-- wrk -t1 -c64 -d10s -s backend/bench/authrep.lua http://127.0.0.1:3901
local counter = 0
local step = 1

function setup(thread)
  thread:set("counter", counter)
  counter = counter + 1
end

function init(args)
  step = 7919
end

function request()
  counter = counter + step
  local s = counter % 100 + 1
  local a = math.floor(counter / 100) % 100 + 1
  return wrk.format("GET", "/transactions/authrep.xml?provider_key=pk" .. s .. "&service_id=" .. s ..
    "&app_id=a" .. a .. "&usage%5Bhits%5D=1")
end
