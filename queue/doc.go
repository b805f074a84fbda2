// Package queue holds users and work in line while a service is
// overloaded or a dependency is down: a waiting room for the crowd at a
// flash sale, and a durable buffer for orders that arrive while payment is
// failing.
//
// # Where to start
//
// A [Room] admits users at a set rate, in the order they arrived, instead
// of refusing most of them. [NewRoom] takes the rate; options bound the
// line ([WithMaxLength]), the wait ([WithMaxWait]) and the number of
// admitted users at once ([WithMaxActive]). [Room.Wait] holds a caller until
// its turn; [Room.Join] and [Room.Status] give a [Ticket] to clients that
// poll instead. [WaitMiddleware], [TicketMiddleware], [StatusHandler] and
// [RequireAdmission] put a room in front of an HTTP endpoint. A [Signer]
// signs the admission token a user gets on their turn and that the
// protected endpoint checks.
//
// A [Buffer] keeps work that must not be lost (an accepted order) until a
// handler has processed it, retrying with backoff and pausing while a
// [Gate], such as the payment provider's circuit breaker, says so.
//
// # The waiting room
//
// The line is strictly first in, first out: a ticket is admitted only when
// every ticket that joined before it has been admitted or has left.
// Admission follows a theoretical admission time: the head of the line is
// admitted at the later of that time and the moment it joined, and the time
// then moves on by 1/rate. A timer fires at each admission instant, so
// admissions are evenly spaced. Go's timers may fire a millisecond late,
// the whole gap at 1000 admissions a second, so on Linux a room admitting
// more often than every 5ms has its timer fire early and sleeps the rest
// on a kernel timer read through the runtime's poller. When a timer does
// fire late, everyone whose instant has passed is admitted at once, so the
// rate holds over any stretch of time. An idle room banks nothing: after a quiet spell the next arrival is
// admitted at once, and the one after it 1/rate later. With
// [WithMaxActive], the head also waits while that many admissions are not
// yet done.
//
// A caller is refused at once, rather than made to wait to be refused, when
// the line is full ([ErrFull]) or when its estimated wait is already longer
// than the maximum wait ([ErrWaitTooLong]; [WithRejectTooLong] turns this
// off). A caller that waits the maximum wait gets [ErrWaitTimeout]; one
// whose context ends leaves the line. Either way its place goes to the
// next. Estimates come from the measured outflow, the rate at which the
// line has actually moved while it was not empty, so a room held back by
// [WithMaxActive] or by slow users tells the truth about the wait.
//
// In ticket mode nobody holds a connection. A ticket not polled within the
// ticket TTL ([WithTicketTTL]) expires and is skipped, so abandoned tickets
// do not stall the line. A ticket whose turn comes must be polled within
// the ticket TTL to claim its admission, which then lasts the admission TTL
// ([WithAdmissionTTL]) or until [Room.Done]. Ticket IDs carry 64 random
// bits, so a client cannot act on someone else's place by guessing.
//
// Admission tokens are compact (base64url, safe in a header, a cookie or
// a URL), signed with HMAC-SHA256, bound to the room and the ticket, and
// valid for [DefaultTokenTTL] unless [WithTokenTTL] says otherwise.
// [Signer.Check] verifies a token without using it up; [Signer.Redeem]
// verifies it and records the admission with a [ReplayGuard], so each
// ticket admits one request however many tokens it was handed, and fails
// closed (an error matching [ErrUnavailable]) when the guard cannot record
// it. The default guard, [MemoryReplayGuard], sees only its own process; a
// fleet shares a [RedisReplayGuard]. Keys rotate with [WithPreviousKeys]:
// add the new key as a previous key everywhere, then make it current, then
// drop the old key once a TTL has passed.
//
// With [WithRedis], the line lives in Redis and every instance of a service
// that uses the same room name shares it: a user who joined first on one
// instance is admitted before a later user on another. Tickets are numbered
// by INCR; one Lua script, on Redis' clock, advances the line at the rate,
// skipping expired tickets, every time any instance looks at it. Callers
// blocked in Wait are woken by one poller per Room, which runs at the next
// admission instant, not by each waiter polling Redis. After a refusal an
// instance refuses from memory, without a round trip, for as long as the
// line cannot have moved enough at the configured rate to take another
// caller (at most a second), so a crowd hammering a full room costs Redis
// little; someone leaving the line in that time is noticed on the next
// call after it. Every instance of a room must be given the same options: each script applies those of the
// instance that runs it. When Redis cannot be reached, Wait, Join, Status,
// Leave and Done fail with an error matching [ErrUnavailable] (the HTTP
// handlers answer 503); callers already waiting keep waiting until their
// own deadline. A waiting caller whose ticket was lost from Redis (an
// outage longer than the ticket TTL, a failover to a replica that lacked
// it) gets an error matching both ErrUnavailable and ErrTicketExpired.
//
// # The durable buffer
//
// A [Buffer] holds work that must not be lost, such as orders accepted
// while the payment provider is down. [Buffer.Enqueue] returns once the
// store holds the message (on Redis, once it is in a stream: as durable as
// Redis' persistence); an idempotency key makes a repeated submission a
// no-op. [Buffer.Run] hands each message to a handler, up to
// [WithConcurrency] at once: a failure is retried after an exponential
// backoff with jitter, the last failure makes a dead letter, kept with its
// error ([Buffer.DeadLetters], [Buffer.Redrive]), and a [Gate] such as the
// payment breaker pauses delivery while it is open ([WithDeferIf] keeps a
// call the breaker refused from using an attempt). Delivery is at least
// once: each message is leased to one consumer, and the lease is renewed
// while its handler runs; a consumer that dies loses its lease and another
// takes the message over, counting the lost delivery as an attempt. Run
// stops gracefully, letting running handlers finish and handing back what
// it had not started. [NewRedisStore] shares one buffer across a fleet
// through a Redis consumer group (Redis 7 or later); [NewMemoryStore]
// behaves the same within one process and is not durable.
//
// # Metrics
//
// Rooms report bulwark.queue.room.joined, .admitted and .rejected (by
// reason: full, too_long, timeout, cancelled, expired, closed,
// unavailable), the wait.duration histogram, and the gauges length,
// active, eta and outflow. Buffers report bulwark.queue.buffer.enqueued,
// .duplicates, .processed, .retried, .deferred, .dead_lettered, .reclaimed
// and .store_errors, and the gauges depth, pending, delayed, dead_letters,
// paused and oldest_age. Every instrument carries the room's or buffer's
// name as bulwark.queue.name and its store, memory or redis, as
// bulwark.queue.store.
package queue
