/* keel.h - everything public in keel. */
#ifndef KEEL_H
#define KEEL_H

#include "keel/error.h"
#include "keel/runtime.h"
#include "keel/process.h"
#include "keel/message.h"
#include "keel/timer.h"
#include "keel/io.h"
#include "keel/registry.h"
#include "keel/table.h"
#include "keel/gen_server.h"
#include "keel/gen_statem.h"
#include "keel/supervisor.h"
#include "keel/task.h"
#include "keel/application.h"
#include "keel/port.h"
#include "keel/config.h"
#include "keel/metrics.h"
#include "keel/sysinfo.h"
#include "keel/http.h"
#include "keel/http_client.h"
#include "keel/alert_sink.h"
#include "keel/log.h"
#include "keel/health.h"
#include "keel/alerts.h"
#include "keel/observer.h"
#include "keel/json.h"
#include "keel/service.h"
#include "keel/eventstore.h"
#include "keel/aggregate.h"

#endif
