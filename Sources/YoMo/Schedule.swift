internal import YoMoTracing

/// When a cron handler runs: `@every <duration>` (Go durations: `1h30m`, `500ms`,
/// `1.5s`), the shorthands `@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`,
/// `@yearly`/`@annually`, or a 5-field cron line `minute hour day-of-month month
/// day-of-week` with `*`, lists, ranges, steps and month/day names, like the Go
/// SDK's `SetCronHandler` (robfig/cron). Cron lines are evaluated in UTC.
public struct Schedule: Hashable, Sendable, CustomStringConvertible {
    enum Kind: Hashable, Sendable {
        case every(Duration)
        case cron(CronFields)
    }

    let kind: Kind
    public let description: String

    public init(_ specification: String) throws(YoMoError) {
        let spec = specification.trimmingSpaces()
        description = spec
        if spec.hasPrefix("@every ") {
            let duration = try Self.parseGoDuration(String(spec.dropFirst("@every ".count)).trimmingSpaces())
            guard duration > .zero else {
                throw YoMoError(.invalidSchedule, "schedule \"\(spec)\": the interval must be positive")
            }
            kind = .every(duration)
            return
        }
        let line: String
        switch spec {
        case "@yearly", "@annually": line = "0 0 1 1 *"
        case "@monthly": line = "0 0 1 * *"
        case "@weekly": line = "0 0 * * 0"
        case "@daily", "@midnight": line = "0 0 * * *"
        case "@hourly": line = "0 * * * *"
        default: line = spec
        }
        kind = .cron(try CronFields(line, specification: spec))
    }

    /// The interval of an `@every` schedule, `nil` for cron lines.
    public var interval: Duration? {
        if case .every(let duration) = kind { duration } else { nil }
    }

    /// The first time the schedule fires strictly after `secondsSinceEpoch` (UTC),
    /// for cron lines; `@every` schedules fire at `start + n × interval` instead.
    public func nextFire(afterUnixSeconds secondsSinceEpoch: Int64) -> Int64? {
        switch kind {
        case .every(let duration):
            return secondsSinceEpoch + max(1, duration.components.seconds)
        case .cron(let fields):
            return fields.next(after: secondsSinceEpoch)
        }
    }

    /// Parses Go's `time.ParseDuration` syntax: a sequence of decimal numbers with
    /// units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`.
    static func parseGoDuration(_ text: String) throws(YoMoError) -> Duration {
        let invalid = YoMoError(.invalidSchedule, "\"\(text)\" is not a duration (examples: 30s, 1m30s, 500ms)")
        var scalars = Substring(text).unicodeScalars[...]
        guard !scalars.isEmpty else { throw invalid }
        var totalNanoseconds = 0.0
        while !scalars.isEmpty {
            let number = scalars.prefix { ("0"..."9").contains($0) || $0 == "." }
            guard !number.isEmpty, let value = Double(String(String.UnicodeScalarView(number))) else { throw invalid }
            scalars = scalars.dropFirst(number.count)
            let unit = String(String.UnicodeScalarView(scalars.prefix { !("0"..."9").contains($0) && $0 != "." }))
            scalars = scalars.dropFirst(unit.unicodeScalars.count)
            let scale: Double
            switch unit {
            case "ns": scale = 1
            case "us", "µs", "μs": scale = 1e3
            case "ms": scale = 1e6
            case "s": scale = 1e9
            case "m": scale = 60e9
            case "h": scale = 3600e9
            default: throw invalid
            }
            totalNanoseconds += value * scale
        }
        guard totalNanoseconds < 9.2e18 else { throw invalid }
        return .nanoseconds(Int64(totalNanoseconds.rounded()))
    }
}

/// The five fields of a cron line as sets of allowed values.
struct CronFields: Hashable, Sendable {
    var minutes: Set<Int>
    var hours: Set<Int>
    var daysOfMonth: Set<Int>
    var months: Set<Int>
    var daysOfWeek: Set<Int>
    var dayOfMonthIsWildcard: Bool
    var dayOfWeekIsWildcard: Bool

    init(_ line: String, specification: String) throws(YoMoError) {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard fields.count == 5 else {
            throw YoMoError(
                .invalidSchedule,
                "schedule \"\(specification)\": a cron line has 5 fields (minute hour day-of-month month day-of-week), found \(fields.count)"
            )
        }
        let months = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
        let days = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
        minutes = try Self.parse(fields[0], name: "minute", range: 0...59, names: [:], specification: specification)
        hours = try Self.parse(fields[1], name: "hour", range: 0...23, names: [:], specification: specification)
        daysOfMonth = try Self.parse(fields[2], name: "day of month", range: 1...31, names: [:], specification: specification)
        self.months = try Self.parse(
            fields[3], name: "month", range: 1...12,
            names: Dictionary(uniqueKeysWithValues: months.enumerated().map { ($1, $0 + 1) }),
            specification: specification
        )
        // 7 is Sunday too, as in most crons.
        var weekdays = try Self.parse(
            fields[4], name: "day of week", range: 0...7,
            names: Dictionary(uniqueKeysWithValues: days.enumerated().map { ($1, $0) }),
            specification: specification
        )
        if weekdays.remove(7) != nil { weekdays.insert(0) }
        daysOfWeek = weekdays
        dayOfMonthIsWildcard = fields[2].hasPrefix("*") || fields[2].hasPrefix("?")
        dayOfWeekIsWildcard = fields[4].hasPrefix("*") || fields[4].hasPrefix("?")
    }

    private static func parse(
        _ field: String, name: String, range: ClosedRange<Int>, names: [String: Int], specification: String
    ) throws(YoMoError) -> Set<Int> {
        func fail(_ why: String) -> YoMoError {
            YoMoError(.invalidSchedule, "schedule \"\(specification)\": \(name) field \"\(field)\" \(why)")
        }
        func value(_ text: Substring) throws(YoMoError) -> Int {
            if let number = Int(text) {
                guard range.contains(number) else { throw fail("has \(number) outside \(range.lowerBound)-\(range.upperBound)") }
                return number
            }
            guard let named = names[text.uppercased()] else { throw fail("has \"\(text)\", not a number") }
            return named
        }
        var result = Set<Int>()
        for part in field.split(separator: ",", omittingEmptySubsequences: false) {
            let pieces = part.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count <= 2, let rangePart = pieces.first, !rangePart.isEmpty else { throw fail("is malformed") }
            var step = 1
            if pieces.count == 2 {
                guard let parsed = Int(pieces[1]), parsed > 0 else { throw fail("has step \"\(pieces[1])\", not a positive number") }
                step = parsed
            }
            var low: Int
            var high: Int
            if rangePart == "*" || rangePart == "?" {
                low = range.lowerBound
                high = range.upperBound
            } else if let dash = rangePart.firstIndex(of: "-") {
                low = try value(rangePart[..<dash])
                high = try value(rangePart[rangePart.index(after: dash)...])
                guard low <= high else { throw fail("has range \(low)-\(high) that runs backwards") }
            } else {
                low = try value(rangePart)
                // "5/15" means from 5 to the end in steps of 15.
                high = pieces.count == 2 ? range.upperBound : low
            }
            for number in stride(from: low, through: high, by: step) { result.insert(number) }
        }
        return result
    }

    func matchesDay(day: Int, weekday: Int) -> Bool {
        // Classic cron: when both day fields are restricted, either may match.
        if dayOfMonthIsWildcard || dayOfWeekIsWildcard {
            return daysOfMonth.contains(day) && daysOfWeek.contains(weekday)
        }
        return daysOfMonth.contains(day) || daysOfWeek.contains(weekday)
    }

    func next(after seconds: Int64) -> Int64? {
        var minute = seconds.floorDivided(by: 60) + 1
        // Five years of minutes bounds the search for impossible lines such as 31 February.
        let limit = minute + 5 * 366 * 1440
        while minute < limit {
            let days = minute.floorDivided(by: 1440)
            let minuteOfDay = Int(minute - days * 1440)
            let (_, month, day) = civilDate(daysSinceEpoch: days)
            let weekday = Int((days + 4).floorModulo(7))  // 1970-01-01 was a Thursday
            if !months.contains(month) {
                minute = (days + Int64(daysInMonth(days) - day + 1)) * 1440
            } else if !matchesDay(day: day, weekday: weekday) {
                minute = (days + 1) * 1440
            } else if !hours.contains(minuteOfDay / 60) {
                minute = days * 1440 + Int64(minuteOfDay / 60 + 1) * 60
            } else if !minutes.contains(minuteOfDay % 60) {
                minute += 1
            } else {
                return minute * 60
            }
        }
        return nil
    }

    private func daysInMonth(_ days: Int64) -> Int {
        let (year, month, _) = civilDate(daysSinceEpoch: days)
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian).
func civilDate(daysSinceEpoch: Int64) -> (year: Int, month: Int, day: Int) {
    let z = daysSinceEpoch + 719_468
    let era = z.floorDivided(by: 146_097)
    let dayOfEra = z - era * 146_097
    let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
    let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
    let monthIndex = (5 * dayOfYear + 2) / 153
    let day = Int(dayOfYear - (153 * monthIndex + 2) / 5 + 1)
    let month = Int(monthIndex < 10 ? monthIndex + 3 : monthIndex - 9)
    let year = Int(yearOfEra + era * 400) + (month <= 2 ? 1 : 0)
    return (year, month, day)
}

extension Int64 {
    func floorDivided(by divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }

    func floorModulo(_ divisor: Int64) -> Int64 { self - floorDivided(by: divisor) * divisor }
}
