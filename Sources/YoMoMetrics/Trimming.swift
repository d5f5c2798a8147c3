// Kept apart from the rest: the fuzz package compiles this file and
// PipelineView.swift on their own (Fuzz/Sources/MetricsPageInFuzz).

extension StringProtocol {
    /// The text without leading and trailing characters that match: what
    /// `trimmingCharacters(in:)` did, which FoundationEssentials does not have.
    package func trimming(_ isTrimmed: (Character) -> Bool) -> String {
        String(drop(while: isTrimmed).reversed().drop(while: isTrimmed).reversed())
    }
}

extension Character {
    /// `CharacterSet.whitespaces`: tab and the Unicode space separators (Zs), not line breaks.
    package var isHorizontalSpace: Bool {
        self == "\t" || (unicodeScalars.count == 1 && unicodeScalars.first!.properties.generalCategory == .spaceSeparator)
    }
}
