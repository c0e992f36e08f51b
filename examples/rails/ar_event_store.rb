# The Rails seed's event store (004: EventSourcing::ArEventStore#save_events,
# EventRecord.create! per event in one transaction after a current-version
# check), writing order life cycles into the seed's events table. readside
# adopts that table (projector adopt); this script knows nothing of readside.
#
#   DATABASE_URL=postgres://... ruby ar_event_store.rb STEPS ORDERS SEED
#
# Each step picks one of ORDERS shared orders (several processes share them,
# so they conflict as real writers do), reads its stream, decides the next
# legal event and saves it; sometimes two events in one save. Conflicts are
# counted and the step moves on. Prints one JSON line of counts.
require "active_record"
require "json"

ActiveRecord::Base.establish_connection(ENV.fetch("DATABASE_URL"))
ActiveRecord::Base.logger = nil

class EventRecord < ActiveRecord::Base
  self.table_name = "events"
end

module Domain
  module Orders
    class Order; end
    module Events
      OrderPlaced = Struct.new(:order_id, :customer_name, :items, :total_amount, :placed_at, keyword_init: true)
      OrderConfirmed = Struct.new(:order_id, :confirmed_at, keyword_init: true)
      OrderShipped = Struct.new(:order_id, :tracking_number, :shipped_at, keyword_init: true)
      OrderCancelled = Struct.new(:order_id, :reason, :cancelled_at, keyword_init: true)
    end
  end
end

module EventSourcing
  class ConcurrencyError < StandardError; end

  class ArEventStore
    def save_events(aggregate_id:, aggregate_type:, events:, expected_version:)
      ActiveRecord::Base.transaction do
        current_version = get_current_version(aggregate_id, aggregate_type)

        if current_version != expected_version
          raise ConcurrencyError, "Version mismatch"
        end

        events.each_with_index do |event, index|
          EventRecord.create!(
            aggregate_id: aggregate_id,
            aggregate_type: aggregate_type,
            event_type: event.class.name,
            event_data: event.to_h,
            version: expected_version + index + 1,
            occurred_at: Time.current
          )
        end
      end
    end

    def load(aggregate_id, aggregate_type)
      EventRecord.where(aggregate_id: aggregate_id, aggregate_type: aggregate_type).order(:version).pluck(:version, :event_type)
    end

    private

    def get_current_version(aggregate_id, aggregate_type)
      EventRecord.where(aggregate_id: aggregate_id, aggregate_type: aggregate_type).maximum(:version) || 0
    end
  end
end

E = Domain::Orders::Events
steps = Integer(ARGV.fetch(0, "50"))
orders = Integer(ARGV.fetch(1, "20"))
rng = Random.new(Integer(ARGV.fetch(2, "1")))
store = EventSourcing::ArEventStore.new
now = -> { Time.now.utc.iso8601(6) }
counts = Hash.new(0)

steps.times do
  id = format("rails-order-%03d", rng.rand(orders))
  stream = store.load(id, Domain::Orders::Order.name)
  version = stream.empty? ? 0 : stream.last[0]
  last = stream.empty? ? nil : stream.last[1].split("::").last
  events =
    case last
    when nil
      cents = 100 + rng.rand(100_000)
      amount = format("%d.%02d", cents / 100, cents % 100)
      placed = E::OrderPlaced.new(order_id: id, customer_name: "Customer #{rng.rand(50)}",
                                  items: [{ product_name: "Widget", quantity: 1, unit_price: amount }],
                                  total_amount: amount, placed_at: now.call)
      rng.rand(4).zero? ? [placed, E::OrderConfirmed.new(order_id: id, confirmed_at: now.call)] : [placed]
    when "OrderPlaced"
      [rng.rand(5).zero? ? E::OrderCancelled.new(order_id: id, reason: "changed mind", cancelled_at: now.call)
                         : E::OrderConfirmed.new(order_id: id, confirmed_at: now.call)]
    when "OrderConfirmed"
      [rng.rand(5).zero? ? E::OrderCancelled.new(order_id: id, reason: "out of stock", cancelled_at: now.call)
                         : E::OrderShipped.new(order_id: id, tracking_number: "TRK#{rng.rand(1_000_000)}", shipped_at: now.call)]
    else
      counts["finished"] += 1
      next
    end
  begin
    store.save_events(aggregate_id: id, aggregate_type: Domain::Orders::Order.name, events: events, expected_version: version)
    counts["saves"] += 1
    counts["events"] += events.size
  rescue EventSourcing::ConcurrencyError
    counts["version_mismatch"] += 1
  rescue ActiveRecord::RecordNotUnique
    counts["record_not_unique"] += 1
  rescue ActiveRecord::SerializationFailure
    counts["serialization_failure"] += 1
  end
end

puts JSON.generate(counts)
