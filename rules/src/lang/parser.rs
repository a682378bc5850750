//! Tokens → syntax tree, by recursive descent (the grammar is in the module doc of
//! [`super`]).
//!
//! Bounded and panic-free on any input: tokens are read with `get` (the stream ends with an
//! `Eof` the parser never steps past), expression recursion is capped at
//! [`MAX_NESTING`](super::MAX_NESTING) levels of parentheses, `not` and unary minus, and the
//! height of any expression tree at [`MAX_EXPR_DEPTH`](super::MAX_EXPR_DEPTH), so the passes
//! after it can recurse safely.
//!
//! Recovery: a syntax error abandons the clause (inside a `{ }` block) or the item (at the top
//! level) and resumes at the next token that starts a line and can start a clause or an item.

use super::ast::*;
use super::diag::{Diags, codes};
use super::lexer::{Tok, Token};
use super::{MAX_EXPR_DEPTH, MAX_NESTING};
use crate::ir::{Interval, Span};

/// Words that start a top-level item.
const ITEM_WORDS: [&str; 5] = ["feature", "plan", "addon", "rule", "test"];
const PLAN_WORDS: [&str; 4] = ["price", "trial", "grant", "meter"];
const TEST_WORDS: [&str; 2] = ["given", "expect"];

/// A syntax error was reported; the caller recovers.
#[derive(Debug)]
pub(crate) struct Failed;

type PResult<T> = Result<T, Failed>;

static EOF: Token = Token {
    tok: Tok::Eof,
    span: Span { start: 0, end: 0 },
    line_start: true,
};

pub(crate) fn parse(tokens: &[Token], diags: &mut Diags) -> File {
    let mut p = Parser {
        toks: tokens,
        pos: 0,
        diags,
        nest: 0,
        last_key: None,
    };
    p.file()
}

struct Parser<'a> {
    toks: &'a [Token],
    pos: usize,
    diags: &'a mut Diags,
    /// Current depth of parentheses, `not` and unary minus.
    nest: u32,
    /// Key of the item being parsed, to remember it if the item breaks.
    last_key: Option<(BrokenKind, Name)>,
}

fn join(a: Span, b: Span) -> Span {
    Span {
        start: a.start.min(b.start),
        end: a.end.max(b.end),
    }
}

impl Parser<'_> {
    // ---- token access -------------------------------------------------------------------

    fn token(&self) -> &Token {
        self.toks.get(self.pos).unwrap_or(&EOF)
    }

    fn peek(&self) -> &Tok {
        &self.token().tok
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        self.toks
            .get(self.pos + ahead)
            .map_or(&Tok::Eof, |t| &t.tok)
    }

    fn span(&self) -> Span {
        self.token().span
    }

    /// Span of the token before the current one (the end of what was parsed).
    fn prev_span(&self) -> Span {
        self.pos
            .checked_sub(1)
            .and_then(|i| self.toks.get(i))
            .map_or(self.span(), |t| t.span)
    }

    fn bump(&mut self) -> Span {
        let span = self.span();
        if !matches!(self.peek(), Tok::Eof) {
            self.pos += 1;
        }
        span
    }

    fn at_word(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(w) if w == word)
    }

    fn at_any_word(&self, words: &[&str]) -> bool {
        matches!(self.peek(), Tok::Ident(w) if words.contains(&w.as_str()))
    }

    fn eat_word(&mut self, word: &str) -> Option<Span> {
        if self.at_word(word) {
            Some(self.bump())
        } else {
            None
        }
    }

    fn eat(&mut self, tok: &Tok) -> Option<Span> {
        if self.peek() == tok {
            Some(self.bump())
        } else {
            None
        }
    }

    fn fail(&mut self, expected: &str) -> Failed {
        let found = self.peek().describe();
        let span = self.span();
        self.diags.error(
            codes::SYNTAX,
            span,
            format!("expected {expected}, found {found}"),
        );
        Failed
    }

    fn expect_word(&mut self, word: &str) -> PResult<Span> {
        match self.eat_word(word) {
            Some(s) => Ok(s),
            None => Err(self.fail(&format!("`{word}`"))),
        }
    }

    fn expect(&mut self, tok: &Tok) -> PResult<Span> {
        match self.eat(tok) {
            Some(s) => Ok(s),
            None => Err(self.fail(&tok.describe())),
        }
    }

    fn ident(&mut self, what: &str) -> PResult<Name> {
        match self.peek() {
            Tok::Ident(w) => {
                let text = w.clone();
                let span = self.bump();
                Ok(Name { text, span })
            }
            _ => Err(self.fail(what)),
        }
    }

    fn string(&mut self, what: &str) -> PResult<Text> {
        match self.peek() {
            Tok::Str(s) => {
                let value = s.clone();
                let span = self.bump();
                Ok(Text { value, span })
            }
            _ => Err(self.fail(what)),
        }
    }

    fn lit(&mut self, what: &str) -> PResult<Lit> {
        match *self.peek() {
            Tok::Int(v) => Ok(Lit {
                value: Some(v),
                span: self.bump(),
            }),
            Tok::BadInt => Ok(Lit {
                value: None,
                span: self.bump(),
            }),
            _ => Err(self.fail(what)),
        }
    }

    /// An integer literal with an optional leading `-`, so that negative amounts parse and
    /// the checker can say why they are wrong.
    fn signed_lit(&mut self, what: &str) -> PResult<Lit> {
        match self.eat(&Tok::Minus) {
            Some(minus) => {
                let lit = self.lit(what)?;
                Ok(Lit {
                    value: lit.value.and_then(i64::checked_neg),
                    span: join(minus, lit.span),
                })
            }
            None => self.lit(what),
        }
    }

    /// `= <int>` or `= unlimited` after the `=`.
    fn amount(&mut self, what: &str) -> PResult<Amount> {
        match self.eat_word("unlimited") {
            Some(span) => Ok(Amount::Unlimited(span)),
            None => Ok(Amount::Int(self.signed_lit(what)?)),
        }
    }

    // ---- items --------------------------------------------------------------------------

    fn file(&mut self) -> File {
        let mut items = Vec::new();
        loop {
            let before = self.pos;
            self.nest = 0;
            self.last_key = None;
            let item = match self.peek() {
                Tok::Eof => break,
                Tok::Ident(w) => match w.as_str() {
                    "feature" => self.feature().map(Item::Feature),
                    "plan" => self.plan().map(Item::Plan),
                    "addon" => self.addon().map(Item::Addon),
                    "rule" => self.rule().map(Item::Rule),
                    "test" => self.test().map(Item::Test),
                    _ => Err(self.fail("`feature`, `plan`, `addon`, `rule` or `test`")),
                },
                _ => Err(self.fail("`feature`, `plan`, `addon`, `rule` or `test`")),
            };
            match item {
                Ok(item) => items.push(item),
                Err(Failed) => {
                    if let Some((kind, key)) = self.last_key.take() {
                        items.push(Item::Broken { kind, key });
                    }
                    self.recover(before, &ITEM_WORDS, false);
                }
            }
        }
        File { items }
    }

    /// Skips to the next token that starts a line and is one of `words` (or any token starting
    /// a line when `any_line` is set), a top-level item word, `}` (inside blocks), or the end.
    /// Always moves past the token where the failed parse started.
    fn recover(&mut self, before: usize, words: &[&str], in_block: bool) {
        if self.pos == before {
            self.bump();
        }
        loop {
            let t = self.token();
            match &t.tok {
                Tok::Eof => return,
                Tok::RBrace if in_block => return,
                Tok::Ident(w)
                    if t.line_start
                        && (words.contains(&w.as_str()) || ITEM_WORDS.contains(&w.as_str())) =>
                {
                    return;
                }
                _ if t.line_start && in_block && words.is_empty() => return,
                _ => {
                    self.bump();
                }
            }
        }
    }

    /// `{ clause* }`: parses clauses with `clause` until `}`, recovering after bad ones. An
    /// unclosed block ends at the next top-level item word that starts a line.
    fn block<T>(
        &mut self,
        words: &[&str],
        mut clause: impl FnMut(&mut Self) -> PResult<T>,
    ) -> PResult<(Vec<T>, Span)> {
        self.expect(&Tok::LBrace)?;
        let mut out = Vec::new();
        loop {
            let t = self.token();
            match &t.tok {
                Tok::RBrace => return Ok((out, self.bump())),
                Tok::Eof => return Err(self.fail("`}`")),
                Tok::Ident(w) if t.line_start && ITEM_WORDS.contains(&w.as_str()) => {
                    let _ = self.fail("`}`");
                    return Ok((out, self.prev_span()));
                }
                _ => {}
            }
            let before = self.pos;
            match clause(self) {
                Ok(c) => out.push(c),
                Err(Failed) => self.recover(before, words, true),
            }
        }
    }

    fn feature(&mut self) -> PResult<FeatureDecl> {
        let start = self.bump();
        let key = self.ident("a feature name")?;
        self.last_key = Some((BrokenKind::Feature, key.clone()));
        self.expect(&Tok::Colon)?;
        let kind = match self.peek() {
            Tok::Ident(w) if w == "bool" => {
                self.bump();
                KindDecl::Bool
            }
            Tok::Ident(w) if w == "limit" => {
                self.bump();
                KindDecl::Limit
            }
            Tok::Ident(w) if w == "metered" => {
                self.bump();
                self.expect_word("per")?;
                if !self.at_any_word(&["day", "month", "year"]) {
                    return Err(self.fail("`day`, `month` or `year`"));
                }
                let period = self.ident("a period")?;
                let mut decl = MeteredDecl {
                    period,
                    aggregation: None,
                    soft: false,
                    lease: None,
                };
                loop {
                    let aggregation = match self.peek() {
                        Tok::Ident(w) if w == "sum" => Some(AggregationDecl::Sum),
                        Tok::Ident(w) if w == "count" => Some(AggregationDecl::Count),
                        Tok::Ident(w) if w == "max" => Some(AggregationDecl::Max),
                        Tok::Ident(w) if w == "latest" => Some(AggregationDecl::Latest),
                        Tok::Ident(w) if w == "unique_count" => {
                            self.bump();
                            self.expect(&Tok::LParen)?;
                            let property = self.ident("an event property name")?;
                            self.expect(&Tok::RParen)?;
                            decl.aggregation = Some(AggregationDecl::UniqueCount(property));
                            continue;
                        }
                        Tok::Ident(w) if w == "soft" => {
                            self.bump();
                            decl.soft = true;
                            continue;
                        }
                        Tok::Ident(w) if w == "lease" => {
                            self.bump();
                            decl.lease = Some(self.lit("a lease size")?);
                            continue;
                        }
                        _ => None,
                    };
                    match aggregation {
                        Some(a) => {
                            self.bump();
                            decl.aggregation = Some(a);
                        }
                        None => break,
                    }
                }
                KindDecl::Metered(decl)
            }
            _ => return Err(self.fail("`bool`, `limit` or `metered`")),
        };
        let fail_open = self.eat_word("fail_open").is_some();
        Ok(FeatureDecl {
            key,
            kind,
            fail_open,
            span: join(start, self.prev_span()),
        })
    }

    fn money(&mut self) -> PResult<Money> {
        let start = self.bump(); // `price`
        let amount = self.signed_lit("an amount in minor units")?;
        let currency = self.ident("a currency code such as `USD`")?;
        self.expect_word("per")?;
        let interval = if self.eat_word("month").is_some() {
            Interval::Month
        } else if self.eat_word("year").is_some() {
            Interval::Year
        } else {
            return Err(self.fail("`month` or `year`"));
        };
        Ok(Money {
            amount,
            currency,
            interval,
            span: join(start, self.prev_span()),
        })
    }

    fn plan(&mut self) -> PResult<PlanDecl> {
        let start = self.bump();
        let key = self.ident("a plan key")?;
        self.last_key = Some((BrokenKind::Plan, key.clone()));
        let name = self.string("the plan's display name in quotes")?;
        let (clauses, end) = self.block(&PLAN_WORDS, Self::plan_clause)?;
        Ok(PlanDecl {
            key,
            name,
            clauses,
            span: join(start, end),
        })
    }

    fn plan_clause(&mut self) -> PResult<PlanClause> {
        let start = self.span();
        if self.at_word("price") {
            return Ok(PlanClause::Price(self.money()?));
        }
        if self.eat_word("trial").is_some() {
            let days = self.lit("a number of days")?;
            if self.eat_word("days").is_none() && self.eat_word("day").is_none() {
                return Err(self.fail("`days`"));
            }
            return Ok(PlanClause::Trial {
                days,
                span: join(start, self.prev_span()),
            });
        }
        if self.eat_word("grant").is_some() {
            let feature = self.ident("a feature name")?;
            let amount = match self.eat(&Tok::Assign) {
                Some(_) => Some(self.amount("a limit or `unlimited`")?),
                // `grant seats 10`: say what is missing rather than "expected a clause".
                None if matches!(self.peek(), Tok::Int(_) | Tok::BadInt) => {
                    return Err(self.fail("`=`"));
                }
                None => None,
            };
            return Ok(PlanClause::Grant {
                feature,
                amount,
                span: join(start, self.prev_span()),
            });
        }
        if self.eat_word("meter").is_some() {
            let feature = self.ident("a metered feature name")?;
            let pricing = self.pricing()?;
            return Ok(PlanClause::Meter {
                feature,
                pricing,
                span: join(start, self.prev_span()),
            });
        }
        Err(self.fail("`price`, `trial`, `grant`, `meter` or `}`"))
    }

    fn pricing(&mut self) -> PResult<PricingDecl> {
        if self.eat_word("per_unit").is_some() {
            return Ok(PricingDecl::PerUnit(
                self.signed_lit("a price per unit in minor units")?,
            ));
        }
        if self.eat_word("graduated").is_some() {
            return Ok(PricingDecl::Graduated(self.tiers()?));
        }
        if self.eat_word("volume").is_some() {
            return Ok(PricingDecl::Volume(self.tiers()?));
        }
        if self.eat_word("package").is_some() {
            let size = self.signed_lit("a package size in units")?;
            self.expect_word("for")?;
            let price = self.signed_lit("a package price in minor units")?;
            return Ok(PricingDecl::Package { size, price });
        }
        Err(self.fail("`per_unit`, `graduated`, `volume` or `package`"))
    }

    /// `{ tier* }`. On a bad tier, skips past this block's `}` so the plan's own clauses
    /// resume cleanly.
    fn tiers(&mut self) -> PResult<Vec<Tier>> {
        self.expect(&Tok::LBrace)?;
        let mut tiers = Vec::new();
        loop {
            if self.eat(&Tok::RBrace).is_some() {
                return Ok(tiers);
            }
            match self.tier() {
                Ok(t) => tiers.push(t),
                Err(Failed) => {
                    while !matches!(self.peek(), Tok::RBrace | Tok::Eof) {
                        if self.token().line_start && self.at_any_word(&ITEM_WORDS) {
                            return Err(Failed);
                        }
                        self.bump();
                    }
                    self.eat(&Tok::RBrace);
                    return Err(Failed);
                }
            }
        }
    }

    fn tier(&mut self) -> PResult<Tier> {
        let start = self.span();
        let up_to = if self.eat_word("up").is_some() {
            self.expect_word("to")?;
            Some(self.signed_lit("the tier's upper bound in units")?)
        } else if self.eat_word("then").is_some() {
            None
        } else {
            return Err(self.fail("`up to`, `then` or `}`"));
        };
        self.expect_word("at")?;
        let unit = self.signed_lit("a price per unit in minor units")?;
        let flat = match self.eat_word("flat") {
            Some(_) => Some(self.signed_lit("a flat fee in minor units")?),
            None => None,
        };
        Ok(Tier {
            up_to,
            unit,
            flat,
            span: join(start, self.prev_span()),
        })
    }

    fn addon(&mut self) -> PResult<AddonDecl> {
        let start = self.bump();
        let key = self.ident("an add-on key")?;
        self.last_key = Some((BrokenKind::Addon, key.clone()));
        let name = self.string("the add-on's display name in quotes")?;
        let (clauses, end) = self.block(&[], Self::addon_clause)?;
        Ok(AddonDecl {
            key,
            name,
            clauses,
            span: join(start, end),
        })
    }

    fn addon_clause(&mut self) -> PResult<AddonClause> {
        let start = self.span();
        if self.at_word("price") {
            return Ok(AddonClause::Price(self.money()?));
        }
        if self.eat_word("grant").is_some() {
            let feature = self.ident("a feature name")?;
            let span = join(start, feature.span);
            return Ok(AddonClause::Grant { feature, span });
        }
        if matches!(self.peek(), Tok::Ident(_)) && matches!(self.peek_at(1), Tok::Plus) {
            let feature = self.ident("a feature name")?;
            self.bump(); // `+`
            let amount = self.signed_lit("an amount per unit of the add-on")?;
            return Ok(AddonClause::AddLimit {
                feature,
                amount,
                span: join(start, amount.span),
            });
        }
        Err(self.fail("`price`, `grant`, `<feature> + <amount>` or `}`"))
    }

    fn rule(&mut self) -> PResult<RuleDecl> {
        let start = self.bump();
        let name = self.string("the rule's name in quotes")?;
        self.expect_word("when")?;
        let when = self.expr()?;
        self.expect(&Tok::FatArrow)?;
        let action_start = self.span();
        let action = self.action()?;
        let action_span = join(action_start, self.prev_span());
        let reason = match self.eat_word("reason") {
            Some(_) => Some(self.ident("a reason code such as `denied_by_rule`")?),
            None => None,
        };
        Ok(RuleDecl {
            name,
            when,
            action,
            action_span,
            reason,
            span: join(start, self.prev_span()),
        })
    }

    fn target(&mut self) -> PResult<TargetDecl> {
        let name = self.ident("`all`, `metered` or a feature name")?;
        Ok(match name.text.as_str() {
            "all" => TargetDecl::All(name.span),
            "metered" => TargetDecl::Metered(name.span),
            _ => TargetDecl::Feature(name),
        })
    }

    fn value(&mut self) -> PResult<ValueDecl> {
        match self.eat_word("unlimited") {
            Some(span) => Ok(ValueDecl::Unlimited(span)),
            None => Ok(ValueDecl::Expr(self.expr()?)),
        }
    }

    fn action(&mut self) -> PResult<ActionDecl> {
        if self.eat_word("deny").is_some() {
            return Ok(ActionDecl::Deny(self.target()?));
        }
        if self.eat_word("grant").is_some() {
            let feature = self.ident("a feature name")?;
            let value = match self.eat(&Tok::Assign) {
                Some(_) => Some(self.value()?),
                None => None,
            };
            return Ok(ActionDecl::Grant(feature, value));
        }
        if self.eat_word("limit").is_some() {
            let target = self.target()?;
            self.expect(&Tok::Assign)?;
            return Ok(ActionDecl::Limit(target, self.value()?));
        }
        if self.eat_word("cap").is_some() {
            let target = self.target()?;
            self.expect_word("at")?;
            self.expect_word("usage")?;
            return Ok(ActionDecl::Cap(target));
        }
        Err(self.fail("`deny`, `grant`, `limit` or `cap`"))
    }

    fn test(&mut self) -> PResult<TestDecl> {
        let start = self.bump();
        let name = self.string("the test's name in quotes")?;
        let mut givens = Vec::new();
        let mut expects = Vec::new();
        let (_, end) = self.block(&TEST_WORDS, |p| {
            if p.eat_word("given").is_some() {
                loop {
                    givens.push(p.given()?);
                    if p.eat(&Tok::Comma).is_none() {
                        return Ok(());
                    }
                }
            }
            if p.eat_word("expect").is_some() {
                loop {
                    expects.push(p.expectation()?);
                    if p.eat(&Tok::Comma).is_none() {
                        return Ok(());
                    }
                }
            }
            Err(p.fail("`given`, `expect` or `}`"))
        })?;
        Ok(TestDecl {
            name,
            givens,
            expects,
            span: join(start, end),
        })
    }

    fn given(&mut self) -> PResult<Given> {
        let start = self.span();
        let name = self.ident("a fact such as `plan`, `status` or `usage(feature)`")?;
        let target = if matches!(self.peek(), Tok::LParen)
            && matches!(name.text.as_str(), "usage" | "addon" | "override")
        {
            self.bump();
            let arg = self.ident("a name")?;
            self.expect(&Tok::RParen)?;
            match name.text.as_str() {
                "usage" => GivenTarget::Usage(arg),
                "addon" => GivenTarget::Addon(arg),
                _ => GivenTarget::Override(arg),
            }
        } else {
            GivenTarget::Fact(name)
        };
        let value = if self.eat(&Tok::Assign).is_some() {
            match self.peek() {
                Tok::Int(_) | Tok::BadInt | Tok::Minus => GivenValue::Int(self.signed_lit("")?),
                Tok::Ident(w) if w == "true" || w == "false" => {
                    let v = w == "true";
                    GivenValue::Bool(v, self.bump())
                }
                Tok::Ident(w) if w == "grant" => {
                    let span = self.bump();
                    let limit = match self.eat_word("limit") {
                        Some(_) => Some(self.amount("a limit or `unlimited`")?),
                        None => None,
                    };
                    GivenValue::Grant(limit, join(span, self.prev_span()))
                }
                Tok::Ident(_) => GivenValue::Word(self.ident("a value")?),
                _ => return Err(self.fail("a value")),
            }
        } else {
            GivenValue::Flag
        };
        Ok(Given {
            target,
            value,
            span: join(start, self.prev_span()),
        })
    }

    fn expectation(&mut self) -> PResult<ExpectDecl> {
        let feature = self.ident("a feature name")?;
        let mut e = ExpectDecl {
            feature: feature.clone(),
            allowed: None,
            limit: None,
            reason: None,
            span: feature.span,
        };
        let mut any = false;
        loop {
            let span = self.span();
            let (slot_taken, what) = if let Some(s) = self.eat_word("allowed") {
                (e.allowed.replace((true, s)).is_some(), "`allowed`/`denied`")
            } else if let Some(s) = self.eat_word("denied") {
                (
                    e.allowed.replace((false, s)).is_some(),
                    "`allowed`/`denied`",
                )
            } else if self.eat_word("limit").is_some() {
                let amount = match self.eat_word("none") {
                    Some(s) => ExpectedLimit::None(s),
                    None => match self.amount("a limit, `unlimited` or `none`")? {
                        Amount::Int(lit) => ExpectedLimit::Int(lit),
                        Amount::Unlimited(s) => ExpectedLimit::Unlimited(s),
                    },
                };
                (e.limit.replace(amount).is_some(), "`limit`")
            } else if self.eat_word("reason").is_some() {
                let code = self.ident("a reason code")?;
                (e.reason.replace(code).is_some(), "`reason`")
            } else if any {
                break;
            } else {
                return Err(self.fail("`allowed`, `denied`, `limit` or `reason`"));
            };
            any = true;
            if slot_taken {
                self.diags.error(
                    codes::DUPLICATE_DEFINITION,
                    join(span, self.prev_span()),
                    format!(
                        "{what} is expected twice for `{}` in one expectation",
                        feature.text
                    ),
                );
            }
        }
        e.span = join(feature.span, self.prev_span());
        Ok(e)
    }

    // ---- expressions --------------------------------------------------------------------

    fn expr(&mut self) -> PResult<Expr> {
        self.or_expr()
    }

    /// Enters one level of parentheses, `not` or unary minus.
    fn enter(&mut self) -> PResult<()> {
        self.nest += 1;
        if self.nest > MAX_NESTING {
            let span = self.span();
            self.diags.error(
                codes::NESTING_TOO_DEEP,
                span,
                format!("expression nested deeper than {MAX_NESTING} levels"),
            );
            return Err(Failed);
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nest = self.nest.saturating_sub(1);
    }

    /// A node of height `depth`, refused past [`MAX_EXPR_DEPTH`].
    fn check_depth(&mut self, depth: u32, span: Span) -> PResult<()> {
        if depth > MAX_EXPR_DEPTH {
            self.diags.error(
                codes::NESTING_TOO_DEEP,
                span,
                format!("expression has more than {MAX_EXPR_DEPTH} levels of operators"),
            );
            return Err(Failed);
        }
        Ok(())
    }

    fn binary(&mut self, op: BinOp, l: Expr, r: Expr) -> PResult<Expr> {
        let span = join(l.span, r.span);
        let depth = l.depth.max(r.depth) + 1;
        self.check_depth(depth, span)?;
        Ok(Expr {
            kind: ExprKind::Binary(op, Box::new(l), Box::new(r)),
            span,
            depth,
        })
    }

    fn unary_node(&mut self, op: UnOp, start: Span, inner: Expr) -> PResult<Expr> {
        let span = join(start, inner.span);
        let depth = inner.depth + 1;
        self.check_depth(depth, span)?;
        Ok(Expr {
            kind: ExprKind::Unary(op, Box::new(inner)),
            span,
            depth,
        })
    }

    fn or_expr(&mut self) -> PResult<Expr> {
        let mut lhs = self.and_expr()?;
        while self.eat_word("or").is_some() {
            let rhs = self.and_expr()?;
            lhs = self.binary(BinOp::Or, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn and_expr(&mut self) -> PResult<Expr> {
        let mut lhs = self.not_expr()?;
        while self.eat_word("and").is_some() {
            let rhs = self.not_expr()?;
            lhs = self.binary(BinOp::And, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn not_expr(&mut self) -> PResult<Expr> {
        if self.at_word("not") {
            self.enter()?;
            let start = self.bump();
            let inner = self.not_expr()?;
            self.leave();
            return self.unary_node(UnOp::Not, start, inner);
        }
        self.cmp_expr()
    }

    fn cmp_op(&self) -> Option<BinOp> {
        Some(match self.peek() {
            Tok::EqEq => BinOp::Eq,
            Tok::Ne => BinOp::Ne,
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            _ => return None,
        })
    }

    fn cmp_expr(&mut self) -> PResult<Expr> {
        let lhs = self.sum_expr()?;
        let Some(op) = self.cmp_op() else {
            return Ok(lhs);
        };
        self.bump();
        let rhs = self.sum_expr()?;
        let e = self.binary(op, lhs, rhs)?;
        if self.cmp_op().is_some() {
            return Err(self.fail("`and`, `or` or `=>` (comparisons do not chain)"));
        }
        Ok(e)
    }

    fn sum_expr(&mut self) -> PResult<Expr> {
        let mut lhs = self.product()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(lhs),
            };
            self.bump();
            let rhs = self.product()?;
            lhs = self.binary(op, lhs, rhs)?;
        }
    }

    fn product(&mut self) -> PResult<Expr> {
        let mut lhs = self.unary()?;
        while self.eat(&Tok::Star).is_some() {
            let rhs = self.unary()?;
            lhs = self.binary(BinOp::Mul, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> PResult<Expr> {
        if matches!(self.peek(), Tok::Minus) {
            self.enter()?;
            let start = self.bump();
            let inner = self.unary()?;
            self.leave();
            let span = join(start, inner.span);
            // `-5` is a literal, not an operation.
            if let ExprKind::Int(v) = inner.kind {
                return Ok(Expr {
                    kind: ExprKind::Int(v.and_then(i64::checked_neg)),
                    span,
                    depth: 1,
                });
            }
            return self.unary_node(UnOp::Neg, start, inner);
        }
        self.atom()
    }

    fn atom(&mut self) -> PResult<Expr> {
        let span = self.span();
        let kind = match self.peek() {
            Tok::Int(v) => ExprKind::Int(Some(*v)),
            Tok::BadInt => ExprKind::Int(None),
            Tok::Ident(w) if w == "true" => ExprKind::Bool(true),
            Tok::Ident(w) if w == "false" => ExprKind::Bool(false),
            Tok::Ident(_) if matches!(self.peek_at(1), Tok::LParen) => {
                let func = self.ident("a function")?;
                self.bump(); // `(`
                let arg = self.ident("a name")?;
                let end = self.expect(&Tok::RParen)?;
                return Ok(Expr {
                    kind: ExprKind::Call { func, arg },
                    span: join(span, end),
                    depth: 1,
                });
            }
            Tok::Ident(w) => ExprKind::Name(w.clone()),
            Tok::LParen => {
                self.enter()?;
                self.bump();
                let inner = self.expr()?;
                let end = self.expect(&Tok::RParen)?;
                self.leave();
                return Ok(Expr {
                    span: join(span, end),
                    ..inner
                });
            }
            _ => return Err(self.fail("an expression")),
        };
        self.bump();
        Ok(Expr {
            kind,
            span,
            depth: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::SourceFile;
    use super::super::lexer::lex;
    use super::*;

    fn parse_text(text: &str) -> (File, Vec<(&'static str, String)>) {
        let mut d = Diags::default();
        let tokens = lex(text, &mut d);
        let file = parse(&tokens, &mut d);
        let src = SourceFile {
            name: "t.tg".into(),
            text: text.into(),
        };
        let diags = d
            .finish(&src, 100)
            .into_iter()
            .map(|d| (d.code, format!("{}:{}", d.line, d.column)))
            .collect();
        (file, diags)
    }

    /// The condition of the only rule, printed with explicit parentheses.
    fn when(text: &str) -> String {
        fn show(e: &Expr) -> String {
            match &e.kind {
                ExprKind::Int(v) => v.map_or("?".into(), |v| v.to_string()),
                ExprKind::Bool(b) => b.to_string(),
                ExprKind::Name(n) => n.clone(),
                ExprKind::Call { func, arg } => format!("{}({})", func.text, arg.text),
                ExprKind::Unary(UnOp::Not, x) => format!("(not {})", show(x)),
                ExprKind::Unary(UnOp::Neg, x) => format!("(- {})", show(x)),
                ExprKind::Binary(op, a, b) => {
                    let op = format!("{op:?}").to_lowercase();
                    format!("({} {op} {})", show(a), show(b))
                }
            }
        }
        let (file, diags) = parse_text(&format!("rule \"r\" when {text} => deny all"));
        assert!(diags.is_empty(), "{text}: {diags:?}");
        match file.items.as_slice() {
            [Item::Rule(r)] => show(&r.when),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn precedence_and_associativity() {
        let cases = [
            ("a or b and not c", "(a or (b and (not c)))"),
            ("not a == 1", "(not (a eq 1))"),
            ("1 + 2 * 3 - 4 > 5", "(((1 add (2 mul 3)) sub 4) gt 5)"),
            ("(a or b) and c", "((a or b) and c)"),
            ("-5 < - days_past_due", "(-5 lt (- days_past_due))"),
            ("- -5 == 5", "(5 eq 5)"),
            (
                "usage(api_calls) >= limit(api_calls)",
                "(usage(api_calls) ge limit(api_calls))",
            ),
            ("override(sso) == deny", "(override(sso) eq deny)"),
        ];
        for (text, expected) in cases {
            assert_eq!(when(text), expected, "{text}");
        }
    }

    #[test]
    fn words_are_keywords_only_where_they_stand() {
        // A plan called `deny`, a feature called `plan`, an add-on called `rule`.
        let (file, diags) = parse_text(
            "feature plan: bool\nplan deny \"D\" { price 0 USD per month grant plan }\n\
             addon rule \"R\" { price 1 USD per month plan + 1 }\n\
             rule \"x\" when plan == deny => grant plan reason granted_by_rule",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(file.items.len(), 4);
    }

    #[test]
    fn errors_in_several_items_are_all_reported() {
        let (file, diags) = parse_text(
            "feature a bool\nfeature b: limit\nrule \"x\" when => deny all\n\
             plan p \"P\" {\n  price 1 USD per week\n  grant b = 1\n}\nfeature c: bool",
        );
        assert_eq!(
            diags,
            vec![
                ("syntax", "1:11".into()),
                ("syntax", "3:15".into()),
                ("syntax", "5:19".into()),
            ]
        );
        // `a` is remembered as broken; `b`, the plan (its good clause) and `c` parsed.
        let kinds: Vec<String> = file
            .items
            .iter()
            .map(|i| match i {
                Item::Feature(f) => format!("feature {}", f.key.text),
                Item::Plan(p) => format!("plan {} {}", p.key.text, p.clauses.len()),
                Item::Broken { key, .. } => format!("broken {}", key.text),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["broken a", "feature b", "plan p 1", "feature c"]);
    }

    #[test]
    fn an_unclosed_block_ends_at_the_next_item() {
        let (file, diags) =
            parse_text("plan p \"P\" {\n  price 1 USD per month\nfeature c: bool\n");
        assert_eq!(diags, vec![("syntax", "3:1".into())]);
        assert_eq!(file.items.len(), 2);
    }

    #[test]
    fn nesting_is_capped_exactly_at_the_limit() {
        let n = MAX_NESTING as usize;
        let ok = format!("{}banned{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(when(&ok), "banned");
        let deep = format!(
            "rule \"r\" when {}banned{} => deny all",
            "(".repeat(n + 1),
            ")".repeat(n + 1)
        );
        let (_, diags) = parse_text(&deep);
        assert_eq!(
            diags.iter().map(|d| d.0).collect::<Vec<_>>(),
            ["nesting_too_deep"]
        );
        let long = MAX_EXPR_DEPTH as usize - 1;
        let chain = format!(
            "rule \"r\" when 1{} > 0 => deny all",
            " + 1".repeat(long - 1)
        );
        assert!(parse_text(&chain).1.is_empty());
        let too_long = format!("rule \"r\" when 1{} > 0 => deny all", " + 1".repeat(long));
        assert_eq!(
            parse_text(&too_long)
                .1
                .iter()
                .map(|d| d.0)
                .collect::<Vec<_>>(),
            ["nesting_too_deep"]
        );
    }

    #[test]
    fn empty_and_comment_only_sources_have_no_items() {
        for text in ["", "\n\n", "# only a comment", "// x\n# y\n"] {
            let (file, diags) = parse_text(text);
            assert!(file.items.is_empty() && diags.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn test_blocks_take_lists_over_several_lines() {
        let (file, diags) = parse_text(
            "test \"t\" {\n given plan = pro,\n   banned,\n   override(sso) = grant limit unlimited\n \
             expect sso allowed limit none reason override,\n   seats denied\n}",
        );
        assert!(diags.is_empty(), "{diags:?}");
        let [Item::Test(t)] = file.items.as_slice() else {
            panic!("{:?}", file.items)
        };
        assert_eq!((t.givens.len(), t.expects.len()), (3, 2));
        assert_eq!(t.givens[1].value, GivenValue::Flag);
        assert!(matches!(
            t.givens[2].value,
            GivenValue::Grant(Some(Amount::Unlimited(_)), _)
        ));
        assert!(matches!(t.expects[0].limit, Some(ExpectedLimit::None(_))));
    }

    #[test]
    fn every_prefix_of_the_demo_parses_without_panicking() {
        let demo = include_str!("../../examples/demo.tg");
        for (i, _) in demo.char_indices() {
            let _ = super::super::compile_source(&SourceFile {
                name: "prefix.tg".into(),
                text: demo[..i].into(),
            });
        }
    }
}
