//! The entitlement rule language: source text → checked [`ir::Program`].
//!
//! [`compile_source`] lexes ([`lexer`]), parses ([`parser`], into [`ast`]), resolves names,
//! checks types and meaning while elaborating into typed IR ([`check`], with constant folding
//! and the "can this rule ever fire?" analysis in [`fold`]), and assembles the program
//! ([`lower`]). It reports every problem it finds at once, each as a [`Diagnostic`] with a
//! stable code ([`diag::codes`]) and a precise span; it never panics, whatever the input.
//!
//! [`compile_sources`] does the same for a program of several files ([`Sources`], a folder
//! of `.tg` files): each file is lexed and parsed alone, then all their items are checked
//! together as if they were one file, in file order, so one file may use what another
//! declares. Every diagnostic names its own file ([`sources`] has the details).
//!
//! # An example
//!
//! ```text
//! # Features: what can be granted.
//! feature sso: bool
//! feature exports: bool
//! feature seats: limit
//! feature api_calls: metered per month fail_open
//!
//! plan pro "Pro" {
//!     price 2900 USD per month
//!     trial 14 days
//!     grant sso
//!     grant exports
//!     grant seats = 10
//!     grant api_calls = 100_000
//!     meter api_calls graduated {
//!         up to 1_000 at 0
//!         then at 1 flat 500
//!     }
//! }
//!
//! addon extra_seats "Extra seats" {
//!     price 500 USD per month
//!     seats + 5              // per unit of quantity
//! }
//!
//! rule "banned" when banned => deny all reason denied_banned
//! rule "late exports" when status == past_due and days_past_due > 7
//!     => deny exports reason denied_past_due
//! rule "read-only" when dunning_level >= 3 => cap metered at usage
//!
//! test "pro with two extra seat packs" {
//!     given plan = pro, addon(extra_seats) = 2
//!     expect seats allowed limit 20, sso allowed reason granted_by_plan
//! }
//! ```
//!
//! # Grammar
//!
//! Newlines are whitespace, except that after a syntax error the parser resumes at a line
//! that starts a clause or an item. Comments run from `#` or `//` to the end of the line.
//! No word is reserved: `plan`, `deny`, `all` ... mean what their position says.
//!
//! ```text
//! file      = item*
//! item      = feature | plan | addon | rule | test
//!
//! feature   = "feature" IDENT ":" kind ["fail_open"]
//! kind      = "bool" | "limit" | "metered" "per" ("day" | "month" | "year") meter_opt*
//! meter_opt = "sum" | "count" | "max" | "latest" | "unique_count" "(" IDENT ")"
//!           | "soft" | "lease" INT                       # aggregation defaults to sum
//!
//! plan      = "plan" IDENT STRING "{" plan_item* "}"
//! plan_item = price
//!           | "trial" INT ("days" | "day")
//!           | "grant" IDENT ["=" (INT | "unlimited")]     # limit/metered need "= ..."
//!           | "meter" IDENT pricing                         # metered features only
//! price     = "price" ["-"] INT CURRENCY "per" ("month" | "year")   # minor units
//! pricing   = "per_unit" INT
//!           | ("graduated" | "volume") "{" tier+ "}"
//!           | "package" INT "for" INT                       # size, price per package
//! tier      = ("up" "to" INT | "then") "at" INT ["flat" INT]   # "then" last, bounds ascend
//!
//! addon     = "addon" IDENT STRING "{" addon_item* "}"
//! addon_item= price | "grant" IDENT | IDENT "+" INT         # "+ n": n per unit of quantity
//!
//! rule      = "rule" STRING "when" expr "=>" action ["reason" REASON]
//! action    = "deny" target
//!           | "grant" IDENT ["=" value]
//!           | "limit" target "=" value                      # target: metered or a feature
//!           | "cap" target "at" "usage"                     # target: metered or a feature
//! target    = "all" | "metered" | IDENT
//! value     = "unlimited" | expr
//!
//! expr      = and ("or" and)*
//! and       = not ("and" not)*
//! not       = "not" not | cmp
//! cmp       = sum [("==" | "!=" | "<" | "<=" | ">" | ">=") sum]   # no chaining
//! sum       = product (("+" | "-") product)*
//! product   = unary ("*" unary)*
//! unary     = "-" unary | atom
//! atom      = INT | "true" | "false" | "(" expr ")"
//!           | FACT | IDENT                                  # IDENT: see below
//!           | ("usage" | "limit" | "allowed" | "override") "(" IDENT ")"
//!           | "addon" "(" IDENT ")"
//! FACT      = "banned" | "in_trial"                         # conditions
//!           | "dunning_level" | "days_past_due" | "today"   # integers (today: days since epoch)
//!           | "status" | "plan"                             # compared with == / != only
//!
//! test      = "test" STRING "{" ("given" given ("," given)* | "expect" expect ("," expect)*)* "}"
//! given     = fact ["=" gvalue]                             # no "=": a flag set to true
//! fact      = FACT | ("usage" | "addon" | "override") "(" IDENT ")"
//! gvalue    = ["-"] INT | "true" | "false" | IDENT          # status, plan key, deny, none
//!           | "grant" ["limit" (INT | "unlimited")]         # overrides
//! expect    = IDENT check+
//! check     = "allowed" | "denied" | "limit" (INT | "unlimited" | "none") | "reason" REASON
//!
//! INT       = [0-9][0-9_]*          IDENT = [A-Za-z_][A-Za-z0-9_]*
//! STRING    = '"' ... '"' on one line, escapes \" and \\
//! CURRENCY  = three upper-case letters (ISO 4217)
//! REASON    = granted_by_plan | denied_not_in_plan | denied_no_subscription | denied_banned
//!           | granted_by_addon | granted_by_rule | denied_by_rule | denied_past_due
//!           | capped_by_rule | override
//! ```
//!
//! # Meaning
//!
//! * Types: `banned`, `in_trial`, `allowed(f)`, comparisons and `and`/`or`/`not` are
//!   conditions; `dunning_level`, `days_past_due`, `today`, `usage(f)` (metered `f`),
//!   `addon(a)` (quantity), `limit(f)` (limit/metered `f`) and integer arithmetic are
//!   integers. Integers are extended with +∞: `limit(f)` of an unlimited `f` is +∞, of an `f`
//!   without a limit 0; `unlimited + n` is unlimited (the table is in [`crate::ir`]).
//!   `status`, `plan` and `override(f)` compare only with `==`/`!=` against a status
//!   (`trialing`, `active`, `past_due`, `canceled`, `none`), a plan key, or an override mode
//!   (`none`, `deny`, `grant`) respectively.
//! * Default reasons: `deny` → `denied_by_rule`, `grant` → `granted_by_rule`, `limit` and
//!   `cap` → `capped_by_rule`. A `deny` must use a `denied_*` reason, the others must not.
//! * A rule whose condition can never hold is an error (`rule_never_fires`): constant false
//!   after folding, or comparisons of one fact that contradict each other or its range.
//! * Tests start from [`ir::FactVector::empty`] (no subscription, no usage, no overrides);
//!   `given plan = X` without `status` means `status = active`. An expectation checks only
//!   what it names; `limit unlimited`, `limit none` and `limit n` are three different
//!   expectations (`limit unlimited` holds only for an allowed, unlimited feature; a denied
//!   one has no limit). Tests are lowered to [`ir::TestCase`]s, not run here.
//! * Features, plans and add-ons may be used before they are declared; their order of
//!   declaration is their index in the program.
//!
//! # Limits
//!
//! Sources over [`MAX_SOURCE_BYTES`] (the files of a program together) or of more than
//! [`MAX_SOURCE_FILES`] files are refused; expressions nest at most [`MAX_NESTING`]
//! parentheses/`not`/minus deep and [`MAX_EXPR_DEPTH`] operators high; at most
//! [`MAX_DIAGNOSTICS`] diagnostics are returned. Keys, names, prices, trials and meter
//! pricing keep the bounds of [`crate::bounds`] (checked here by the same function bundle
//! verification uses); what a program needs to ship beyond the language (a module's size,
//! features, plans and tests) is [`crate::compiler::check`]'s.

mod ast;
mod check;
pub mod diag;
mod fold;
mod lexer;
mod lower;
mod parser;
pub mod sources;

pub use diag::{Diagnostic, Location, Severity};
pub use sources::{MAX_SOURCE_FILES, Sources, SourcesError};

use crate::bounds::{self, Problem};
use crate::ir::{self, Span};
use diag::{Diags, codes};

/// Largest source accepted, in bytes: of one file, or of all the files of a program.
pub const MAX_SOURCE_BYTES: usize = 1 << 20;
/// Deepest nesting of parentheses, `not` and unary minus in one expression.
pub const MAX_NESTING: u32 = 64;
/// Highest expression tree (a chain of 200 `and`s is 200 high), which bounds every pass that
/// recurses over expressions after the parser.
pub const MAX_EXPR_DEPTH: u32 = 256;
/// Most diagnostics returned from one compilation; the rest are counted in one more.
pub const MAX_DIAGNOSTICS: usize = 100;

/// A source file: its name (for messages) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// Parses, checks and lowers one source file.
///
/// `Ok` carries the program and its warnings; `Err` carries every diagnostic found (warnings
/// included), in source order, at least one of them an error.
pub fn compile_source(
    file: &SourceFile,
) -> Result<(ir::Program, Vec<Diagnostic>), Vec<Diagnostic>> {
    compile_sources(&Sources::one(file.clone()))
}

/// Parses the files of `sources` one by one, then checks and lowers their items as one
/// program. What [`compile_source`] returns, with each diagnostic in its own file and the
/// diagnostics in source order, file by file.
pub fn compile_sources(
    sources: &Sources,
) -> Result<(ir::Program, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut diags = Diags::default();
    let total = sources.total_bytes();
    if total > MAX_SOURCE_BYTES {
        let message = match sources.files() {
            [file] => format!(
                "source is {} bytes; the limit is {MAX_SOURCE_BYTES}",
                file.text.len()
            ),
            files => format!(
                "the {} source files are {total} bytes together; the limit is \
                 {MAX_SOURCE_BYTES}",
                files.len()
            ),
        };
        diags.error(codes::INPUT_TOO_LARGE, Span { start: 0, end: 0 }, message);
        return Err(diags.finish_sources(sources, MAX_DIAGNOSTICS));
    }
    // Each file alone, so a syntax error (an unclosed block, say) ends with its file.
    let mut ast = ast::File { items: Vec::new() };
    for (file, start) in sources.with_starts() {
        let tokens = lexer::lex_at(&file.text, start, &mut diags);
        ast.items.extend(parser::parse(&tokens, &mut diags).items);
    }
    let checked = check::check(&ast, &mut diags);
    // The same bounds bundle verification applies to a manifest.
    if let Err(issues) = bounds::validate(
        &checked.features,
        &checked.plans,
        &checked.addons,
        checked.rules.iter().map(|r| r.name.as_str()),
        checked.tests.iter().map(|t| t.name.as_str()),
    ) {
        for issue in issues {
            let code = match issue.problem {
                Problem::Key(_) | Problem::Property(_) => codes::INVALID_KEY,
                Problem::NameEmpty | Problem::NameTooLong(_) | Problem::NameControl(_) => {
                    codes::INVALID_NAME
                }
                Problem::Price(_) | Problem::MeterPrice { .. } => codes::INVALID_MONEY,
                Problem::Currency(_) => codes::INVALID_CURRENCY,
                Problem::Trial(_) | Problem::MeterUnits { .. } => codes::INVALID_VALUE,
            };
            diags.error(code, checked.spans.span(issue.site), issue.to_string());
        }
    }
    if diags.has_errors() {
        return Err(diags.finish_sources(sources, MAX_DIAGNOSTICS));
    }
    match lower::lower(checked) {
        Ok(program) => Ok((program, diags.finish_sources(sources, MAX_DIAGNOSTICS))),
        Err(message) => {
            diags.error(
                codes::INTERNAL_ERROR,
                Span { start: 0, end: 0 },
                format!("compiler bug: {message}"),
            );
            Err(diags.finish_sources(sources, MAX_DIAGNOSTICS))
        }
    }
}
